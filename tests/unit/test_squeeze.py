"""De-escalation policy on injected card readings: when an OOM is a squeeze, when its plan fits again,
and the hysteresis that holds a plan off after it ran out of memory again."""

from __future__ import annotations

import json

from tamer.daemon.card import FAKE_CARD_ENV, CardProcess, CardView, read_card
from tamer.daemon.squeeze import (
    PlanRecord,
    Squeeze,
    after_oom_again,
    after_step_back,
    choose_step_back,
    measured_need,
    our_share,
    squeeze_at_oom,
)
from tamer.planner.estimate import CUDA_CONTEXT_BYTES

GIB = 1024**3
MARGIN = 0.10


def squeeze(
    key: str = "fast",
    predicted: int | None = 12 * GIB,
    measured: int | None = None,
    attempt: int = 1,
    others: int = 60 * GIB,
) -> Squeeze:
    return Squeeze(
        plan={"micro_batch_size": 8},
        key=key,
        predicted=predicted,
        measured=measured,
        others=others,
        attempt=attempt,
        processes=[{"pid": 4242, "used": others, "name": "other job"}],
    )


def card(free_gib: float, total_gib: float = 80, other_pid: int | None = None, other_gib: float = 0) -> CardView:
    processes = (CardProcess(other_pid, int(other_gib * GIB)),) if other_pid else ()
    return CardView(total=int(total_gib * GIB), free=int(free_gib * GIB), processes=processes, source="test")


def decide(squeezes, view, ours=0, cap=None, records=None, now=1000.0, max_per_plan=3):
    return choose_step_back(squeezes, view, ours, cap, MARGIN, records or {}, now, max_per_plan, GIB)


def test_an_oom_on_a_card_others_hold_is_a_squeeze_and_on_an_empty_card_is_not():
    """Right after the OOM all used memory is someone else's: 60 GiB used is a squeeze, 200 MiB is not."""
    assert squeeze_at_oom(card(free_gib=20), GIB) == 60 * GIB
    assert squeeze_at_oom(card(free_gib=79.8), GIB) is None
    assert squeeze_at_oom(None, GIB) is None


def test_no_step_back_while_the_others_still_hold_the_memory():
    """While another job holds 70 GiB of 80, a plan needing 12 GiB is not stepped back to."""
    assert decide([squeeze()], card(free_gib=2, other_pid=4242, other_gib=70), ours=8 * GIB) is None


def test_step_back_once_the_memory_is_back_and_the_other_process_is_gone():
    """When the other job has left, the card has room for the better plan with the margin: step back, saying why."""
    decision = decide([squeeze()], card(free_gib=71.5), ours=8 * GIB)
    assert decision is not None and decision.index == 0
    assert decision.others_now < GIB and "gone: pid 4242" in decision.reason and "12.0 GiB predicted" in decision.reason


def test_the_cap_bounds_the_room():
    """Under a 10 GiB cap the better plan (12 GiB) never fits, however empty the card is."""
    assert decide([squeeze()], card(free_gib=79), cap=10 * GIB + CUDA_CONTEXT_BYTES) is None


def test_the_margin_is_kept():
    """A plan that fits the room only without the safety margin is not stepped back to."""
    room = 13 * GIB + CUDA_CONTEXT_BYTES  # 13 GiB for the allocator, 11.7 GiB with the 10% margin kept free
    view = CardView(total=80 * GIB, free=room, processes=())
    assert decide([squeeze()], view, ours=0) is None
    assert decide([squeeze(predicted=11 * GIB)], view, ours=0) is not None


def test_a_measured_peak_needs_no_margin():
    """A plan measured to train at 13.9 GiB steps back into 14 GiB of room; predicted at 13.9 GiB it would not."""
    view = CardView(total=80 * GIB, free=14 * GIB + CUDA_CONTEXT_BYTES, processes=())
    assert decide([squeeze(predicted=None, measured=int(13.9 * GIB))], view) is not None
    assert decide([squeeze(predicted=int(13.9 * GIB))], view) is None


def test_our_own_child_does_not_count_as_another_process():
    """The memory our escalated child holds is freed by the restart: it does not block the step back."""
    view = CardView(total=80 * GIB, free=5 * GIB, processes=(CardProcess(77, 75 * GIB),))
    assert decide([squeeze()], view, ours=our_share(view, {77}, None)) is not None
    assert decide([squeeze()], view, ours=our_share(view, set(), None)) is None  # negative control: seen as another job


def test_our_paged_optimizer_state_is_ours_though_nvml_lists_it_under_no_process():
    """A 16 GB card with nobody else on it: our child is listed at 11 GiB, and 2.5 GiB of its paged 8-bit
    moments (CUDA managed memory) count in the card's use but in no process's. They are ours, as far as the
    unattributed memory goes; without that they would pass for another job, and the plan (13 GiB predicted)
    would never fit again."""
    view = CardView(total=16 * GIB, free=int(2.3 * GIB), processes=(CardProcess(77, 11 * GIB),), source="test")
    managed = int(2.5 * GIB)
    ours = our_share(view, {77}, None, managed)
    assert ours == 11 * GIB + managed  # 11 listed + 2.5 managed (the card leaves 2.7 GiB unattributed)
    assert decide([squeeze(predicted=13 * GIB)], view, ours=ours) is not None
    assert (
        decide([squeeze(predicted=13 * GIB)], view, ours=our_share(view, {77}, None)) is None
    )  # the phantom "other job" of before
    # Only what the card leaves unattributed: evicted to the host, the moments are not on the card to count.
    evicted = CardView(total=16 * GIB, free=int(4.8 * GIB), processes=(CardProcess(77, 11 * GIB),), source="test")
    assert our_share(evicted, {77}, None, managed) == 16 * GIB - int(4.8 * GIB)  # 11 listed + the 0.2 GiB unattributed


def test_the_earliest_squeeze_that_fits_wins():
    """With two squeezes stacked (fast -> middle -> slow), the fastest plan that fits again is chosen."""
    stacked = [squeeze("fast", predicted=30 * GIB), squeeze("middle", predicted=10 * GIB, attempt=2)]
    half_free = card(free_gib=20, other_pid=4242, other_gib=60)
    assert decide(stacked, half_free).squeeze.key == "middle"
    assert decide(stacked, card(free_gib=79)).squeeze.key == "fast"


def test_a_plan_that_ooms_again_is_held_off_for_a_growing_while():
    """After an OOM following a step back the plan waits `backoff`, then twice that after the next one."""
    first = after_oom_again(after_step_back(PlanRecord()), now=1000.0, first_wait=600.0, longest_wait=4 * 3600.0)
    assert first.not_before == 1600.0
    assert decide([squeeze()], card(free_gib=79), records={"fast": first}, now=1599.0) is None
    assert decide([squeeze()], card(free_gib=79), records={"fast": first}, now=1600.0) is not None
    second = after_oom_again(after_step_back(first), now=2000.0, first_wait=600.0, longest_wait=4 * 3600.0)
    assert second.not_before == 3200.0


def test_steps_back_to_one_plan_are_bounded():
    """A plan already stepped back to max_per_plan times is not stepped back to again."""
    record = PlanRecord(steps_back=3)
    assert decide([squeeze()], card(free_gib=79), records={"fast": record}, max_per_plan=3) is None
    assert decide([squeeze()], card(free_gib=79), records={"fast": record}, max_per_plan=4) is not None


def test_unknown_need_waits_for_an_empty_card():
    """Without any measure of the better plan's need, only a card the others have left is enough."""
    assert decide([squeeze(predicted=None)], card(free_gib=70, other_pid=4242, other_gib=10)) is None
    assert decide([squeeze(predicted=None)], card(free_gib=79.5)) is not None


def test_measured_need_is_what_pytorch_held_plus_what_it_asked_for_or_the_earlier_peak():
    """The OOM message's use less the CUDA context plus the failed allocation; an earlier higher peak wins."""
    sizes = {"process_in_use": 10 * GIB, "tried_to_allocate": 2 * GIB}
    assert measured_need(sizes, {}, None) == 12 * GIB - CUDA_CONTEXT_BYTES
    assert measured_need(sizes, {}, 14 * GIB) == 14 * GIB
    assert measured_need({}, {"peak_reserved": 9 * GIB}, None) == 9 * GIB
    assert measured_need({}, {}, None) is None


def test_fake_card_file_is_read_through_the_environment(tmp_path, monkeypatch):
    """TAMER_FAKE_CARD points read_card() at a JSON file a test rewrites; sizes may be strings."""
    path = tmp_path / "card.json"
    path.write_text(
        json.dumps({"total": "40GiB", "free": "8GiB", "processes": [{"pid": 4242, "used": "30GiB", "name": "job"}]})
    )
    monkeypatch.setenv(FAKE_CARD_ENV, str(path))
    view = read_card()
    assert view.total == 40 * GIB and view.used == 32 * GIB and view.processes[0].used == 30 * GIB
    path.write_text("{broken")
    assert read_card() is None
