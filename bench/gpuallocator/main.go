// Command gpuallocator answers GPU picks with NVIDIA's go-gpuallocator best-effort policy (the one
// k8s-device-plugin's GetPreferredAllocation uses), for bench/placement.py to compare against.
//
// Input on stdin (JSON): {"gpus": N, "links": [[i, j, [type, ...]], ...],
// "queries": [{"available": [...], "required": [...], "size": k}, ...]}. Link types are
// go-gpuallocator's P2PLinkType values: 1 cross-CPU, 2 same CPU, 3 host bridge, 4 multi-switch,
// 5 single switch, 6 same board, 7+n-1 n NVLinks. Output on stdout (JSON): one list of GPU
// indexes per query, and each pair's score as go-gpuallocator computes it.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/NVIDIA/go-gpuallocator/gpuallocator"
)

type query struct {
	Available []int `json:"available"`
	Required  []int `json:"required"`
	Size      int   `json:"size"`
	// Fill, when set, asks for these sizes one after another from Available, each pick leaving it
	// (Size and Required are then unused); the answer lists every pick until one does not fit.
	Fill []int `json:"fill"`
}

type input struct {
	GPUs    int                  `json:"gpus"`
	Links   [][3]json.RawMessage `json:"links"`
	Queries []query              `json:"queries"`
}

type output struct {
	Picks  [][]int   `json:"picks"`
	Fills  [][][]int `json:"fills"`
	Scores [][]int   `json:"scores"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintf(os.Stderr, "gpuallocator: bad input: %v\n", err)
		os.Exit(2)
	}
	devices := make([]*gpuallocator.Device, in.GPUs)
	for i := range devices {
		d := &gpuallocator.Device{Index: i, Links: map[int][]gpuallocator.P2PLink{}}
		d.UUID = fmt.Sprintf("GPU-%d", i)
		devices[i] = d
	}
	for _, raw := range in.Links {
		var a, b int
		var types []uint
		if json.Unmarshal(raw[0], &a) != nil || json.Unmarshal(raw[1], &b) != nil || json.Unmarshal(raw[2], &types) != nil {
			fmt.Fprintf(os.Stderr, "gpuallocator: bad link %s\n", raw)
			os.Exit(2)
		}
		if a < 0 || b < 0 || a >= in.GPUs || b >= in.GPUs {
			fmt.Fprintf(os.Stderr, "gpuallocator: link %d-%d names no GPU\n", a, b)
			os.Exit(2)
		}
		for _, t := range types {
			devices[a].Links[b] = append(devices[a].Links[b], link(devices[b], t))
			devices[b].Links[a] = append(devices[b].Links[a], link(devices[a], t))
		}
	}
	policy := gpuallocator.NewBestEffortPolicy()
	out := output{Picks: [][]int{}, Fills: [][][]int{}, Scores: make([][]int, in.GPUs)}
	for _, q := range in.Queries {
		if q.Fill != nil {
			out.Fills = append(out.Fills, fill(policy, devices, q.Available, q.Fill))
			continue
		}
		picked := policy.Allocate(pick(devices, q.Available), pick(devices, q.Required), q.Size)
		out.Picks = append(out.Picks, indexesOf(picked))
	}
	for i := range devices {
		out.Scores[i] = make([]int, in.GPUs)
		for j := range devices {
			out.Scores[i][j] = pairScore(devices[i], devices[j])
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}

func fill(policy gpuallocator.Policy, devices []*gpuallocator.Device, available, sizes []int) [][]int {
	free := map[int]bool{}
	for _, i := range available {
		free[i] = true
	}
	steps := [][]int{}
	for _, size := range sizes {
		left := []int{}
		for i := range devices {
			if free[i] {
				left = append(left, i)
			}
		}
		if len(left) < size {
			break
		}
		picked := indexesOf(policy.Allocate(pick(devices, left), nil, size))
		if len(picked) != size {
			break
		}
		for _, i := range picked {
			free[i] = false
		}
		steps = append(steps, picked)
	}
	return steps
}

func indexesOf(picked []*gpuallocator.Device) []int {
	indexes := []int{}
	for _, d := range picked {
		// the policy pads partitions with nil devices and may hand such padding back
		if d != nil {
			indexes = append(indexes, d.Index)
		}
	}
	sort.Ints(indexes)
	return indexes
}

func pick(devices []*gpuallocator.Device, indexes []int) []*gpuallocator.Device {
	out := []*gpuallocator.Device{}
	for _, i := range indexes {
		out = append(out, devices[i])
	}
	return out
}

// pairScore is go-gpuallocator's own pair score (calculateGPUPairScore): 10 per step of PCIe
// closeness from cross-CPU (10) to same board (60), 100 per NVLink.
func pairScore(a, b *gpuallocator.Device) int {
	if a == b {
		return 0
	}
	score := 0
	for _, l := range a.Links[b.Index] {
		t := uint(l.Type)
		switch {
		case t >= 1 && t <= 6:
			score += 10 * int(t)
		case t >= 7:
			score += 100 * int(t-6)
		}
	}
	return score
}

// link builds a P2PLink of type t: the type lives in an internal package, so it is counted up to.
func link(to *gpuallocator.Device, t uint) gpuallocator.P2PLink {
	l := gpuallocator.P2PLink{GPU: to}
	for uint(l.Type) < t {
		l.Type++
	}
	return l
}
