"""Resolving which pending pod a kubelet request is for, from the pods' allocations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.deviceplugin.pods import (
    PendingPod,
    ResolveError,
    allocated_annotation,
    candidates,
    owner,
    preferred,
)
from gedge_model import DeviceGrant
from tests.deviceplugin.conftest import GPU0, NODE, VF0, VF1, VF2, pending

VF = "gedge.io/sriov-vf"


def vf(address: str, container: str | None = None) -> DeviceGrant:
    return DeviceGrant(resource=VF, id=address, pci_address=address, container=container)


def test_allocate_owner_is_the_pod_whose_grant_is_exactly_the_request():
    pods = [pending("u1", "a", [vf(VF0)]), pending("u2", "b", [vf(VF1), vf(VF2)])]
    found = candidates(pods, VF, NODE)

    assert owner(found, VF, [VF2, VF1]).pod.name == "b"
    assert owner(found, VF, [VF0]).pod.name == "a"
    # Pod b's one container asked for both VFs: half of them is not its request.
    with pytest.raises(
        ResolveError, match=r"grants \['0000:3b:02.1'\] of gedge.io/sriov-vf to one container.*ml/b has"
    ):
        owner(found, VF, [VF1])
    with pytest.raises(ResolveError, match="names a device twice"):
        owner(found, VF, [VF0, VF0])


def test_each_container_is_its_own_claim():
    pods = [pending("u1", "a", [vf(VF0, "trainer"), vf(VF1, "loader")])]
    found = candidates(pods, VF, NODE)

    assert owner(found, VF, [VF1]).container == "loader"
    with pytest.raises(ResolveError):
        owner(found, VF, [VF0, VF1])


def test_two_pods_granted_the_same_devices_are_refused_by_name():
    pods = [pending("u1", "a", [vf(VF0)]), pending("u2", "b", [vf(VF0)])]

    with pytest.raises(ResolveError, match=r"several pods: ml/a, ml/b"):
        owner(candidates(pods, VF, NODE), VF, [VF0])


def test_unusable_annotations_are_named_with_why():
    broken = PendingPod(uid="u3", namespace="ml", name="broken", annotation='{"pod_uid": 7}')
    elsewhere = pending("u4", "elsewhere", [vf(VF0)], node="edge-2")
    stolen = replace(pending("u5", "copy", [vf(VF1)]), uid="u6")
    found = candidates([broken, elsewhere, stolen], VF, NODE)

    assert found.claims == ()
    reasons = dict((pod.name, why) for pod, why in found.invalid)
    assert "gedge.io/allocation" in reasons["broken"]
    assert "node 'edge-2'" in reasons["elsewhere"]
    assert "pod uid u5, not u6" in reasons["copy"]
    with pytest.raises(ResolveError) as refused:
        owner(found, VF, [VF0])
    for ref in ("ml/broken: ", "ml/elsewhere: ", "ml/copy: "):
        assert ref in str(refused.value)


def test_preferred_picks_the_grant_that_fits_kubelets_request():
    pods = [pending("u1", "a", [vf(VF0)], created=2.0), pending("u2", "b", [vf(VF1), vf(VF2)], created=1.0)]
    found = candidates(pods, VF, NODE)

    assert preferred(found, VF, [VF0, VF1, VF2], [], 2) == (found.claims[0], (VF1, VF2))
    assert preferred(found, VF, [VF0, VF1, VF2], [], 1) == (found.claims[1], (VF0,))
    # Devices kubelet no longer has free cannot be preferred.
    with pytest.raises(ResolveError, match="fits a request for 2"):
        preferred(found, VF, [VF0, VF1], [], 2)
    with pytest.raises(ResolveError, match="fits a request for 1"):
        preferred(found, VF, [VF0, VF1, VF2], [VF1], 1)


def test_preferred_tie_goes_to_the_oldest_pod_and_served_grants_drop_out():
    older = pending("u1", "older", [vf(VF1)], created=1.0)
    newer = pending("u2", "newer", [vf(VF0)], created=5.0)
    everything = [VF0, VF1, VF2]

    assert preferred(candidates([newer, older], VF, NODE), VF, everything, [], 1)[1] == (VF1,)

    served = replace(older, marks={allocated_annotation(VF): VF1})
    assert preferred(candidates([newer, served], VF, NODE), VF, everything, [], 1)[1] == (VF0,)


def test_other_resources_of_the_pod_are_not_claims():
    pods = [pending("u1", "a", [DeviceGrant(resource="gedge.io/gpu", id=GPU0), vf(VF0)])]

    assert [sorted(c.device_ids) for c in candidates(pods, "gedge.io/gpu", NODE).claims] == [[GPU0]]


def test_allocated_annotation_is_a_valid_kubernetes_key():
    assert allocated_annotation("gedge.io/mig-1g.10gb.me") == "gedge.io/allocated-mig-1g.10gb.me"
    assert allocated_annotation(VF) == "gedge.io/allocated-sriov-vf"


def test_pod_level_grant_is_shared_out_by_the_containers_requests():
    """The extender grants to the pod; kubelet asks per container, with that container's count."""
    pod = replace(pending("u1", "a", [vf(VF0), vf(VF1), vf(VF2)]), requests={VF: (1, 2)})
    found = candidates([pod], VF, NODE)

    assert owner(found, VF, [VF2]).pod.name == "a"
    assert owner(found, VF, [VF0, VF1]).pod.name == "a"
    with pytest.raises(ResolveError, match="to one container"):
        owner(found, VF, [VF0, VF1, VF2])
    with pytest.raises(ResolveError, match="to one container"):
        owner(found, VF, ["0000:3b:02.7"])

    assert preferred(found, VF, [VF0, VF1, VF2], [], 2)[1] == (VF0, VF1)
    assert preferred(found, VF, [VF0, VF1, VF2], [VF2], 2)[1] == (VF2, VF0)
    with pytest.raises(ResolveError):
        preferred(found, VF, [VF0, VF1, VF2], [], 3)
    after_first = replace(pod, marks={allocated_annotation(VF): VF0})
    assert preferred(candidates([after_first], VF, NODE), VF, [VF1, VF2], [], 2)[1] == (VF1, VF2)


def test_devices_an_init_container_used_can_be_preferred_again_for_the_app_container():
    pod = replace(pending("u1", "a", [vf(VF0)]), requests={VF: (1, 1)})
    served = replace(pod, marks={allocated_annotation(VF): VF0})
    found = candidates([served], VF, NODE)

    assert preferred(found, VF, [VF0, VF1], [VF0], 1)[1] == (VF0,)
    assert owner(found, VF, [VF0]).pod.name == "a"
    with pytest.raises(ResolveError):
        preferred(found, VF, [VF0, VF1], [], 1)
