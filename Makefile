# Two entry points for a new user: `make demo` (the main job on this machine,
# no cluster) and `make test` (every test). Everything else is plumbing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck venv system-deps e2e-binaries image

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Debian packages the tests drive for real (Prometheus for the dashboards test,
# hwloc for the discovery benchmark, systemd-analyze for the units, buildah and
# debootstrap for `make image`, containerd and runc to run the image and under the
# e2e node's containerd; the CNI plugins, iptables and a static busybox for the e2e
# tests' real node).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	  command -v lstopo >/dev/null || missing="$$missing hwloc"; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  command -v buildah >/dev/null || missing="$$missing buildah"; \
	  command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	  command -v containerd >/dev/null || missing="$$missing containerd"; \
	  command -v runc >/dev/null || missing="$$missing runc"; \
	  [ -x /usr/lib/cni/bridge ] || missing="$$missing containernetworking-plugins"; \
	  command -v iptables >/dev/null || missing="$$missing iptables"; \
	  dpkg-query -W busybox-static >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	fi

lint: venv typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m protos.generate --check

# mypy, configured under [tool.mypy] in pyproject.toml.
typecheck: venv
	$(BIN)/mypy agent scheduler_extender gedge_model gedge_common bench

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet
# (tests/e2e/controlplane), containerd, ctr and the runc shim (tests/e2e/node),
# kustomize and kube-proxy (tests/e2e/node/build_tools.sh, after the control plane:
# kube-proxy shares its Go build cache) for the e2e tests, built from their Go
# modules at the pinned versions and cached under ~/.cache/gedge-accel (rebuilt
# only when the pins change).
e2e-binaries:
	tests/e2e/controlplane/build.sh >/dev/null
	tests/e2e/node/build_containerd.sh >/dev/null
	tests/e2e/node/build_tools.sh >/dev/null

# The project image (Containerfile) as an OCI archive at build/gedge-accel-image.tar,
# tagged gedge-accel:<version>, built by buildah without a Docker engine. With no
# BASE_IMAGE the base is made from Debian packages and cached; where a registry is
# reachable: make image BASE_IMAGE=python:3.11-slim-bookworm
image:
	BASE_IMAGE="$(BASE_IMAGE)" image/build.sh

test: venv system-deps lint e2e-binaries image
	$(BIN)/pytest -q -rs

demo: venv
	$(BIN)/gedge-extender demo
