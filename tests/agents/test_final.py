"""The reporting rule (PROTOCOL.md): best wave-1 validation across Phases 1 and 3; when that is the
seed, the best non-seed is reported so that a null NAS result is visible."""

from agentnas.agents.final import Finalist, choose


def finalist(arch, phase, val, seed=False):
    return Finalist(arch_id=arch, phase=phase, source="", recipe={}, val_metric=val, is_seed=seed)


def test_phase_1_alone_reports_its_best():
    winner, seed, rule = choose([finalist("arch_002", 1, 3.0, seed=True), finalist("arch_001", 1, 4.0)])
    assert winner.arch_id == "arch_002" and seed is None and "Phase 1" in rule


def test_nas_beats_the_seed():
    candidates = sorted([finalist("arch_001", 1, 5.0, seed=True), finalist("cfg_seed", 3, 5.1, seed=True),
                         finalist("cfg_a", 3, 4.0), finalist("cfg_b", 3, 4.5)], key=lambda f: f.val_metric)
    winner, seed, rule = choose(candidates)
    assert winner.arch_id == "cfg_a" and seed.arch_id == "arch_001"  # the Phase 1 seed, beside it
    assert "across Phases 1 and 3" in rule


def test_null_nas_reports_the_best_non_seed():
    """The seed (or its configuration in Phase 3) is best: the best non-seed is reported instead."""
    candidates = sorted([finalist("arch_001", 1, 3.0, seed=True), finalist("cfg_seed", 3, 3.2, seed=True),
                         finalist("cfg_a", 3, 3.5), finalist("arch_002", 1, 3.9)], key=lambda f: f.val_metric)
    winner, seed, rule = choose(candidates)
    assert winner.arch_id == "cfg_a" and seed.arch_id == "arch_001"
    assert "NAS never beat the seed" in rule


def test_only_the_seed_finished():
    winner, seed, rule = choose([finalist("arch_001", 1, 3.0, seed=True), finalist("cfg_seed", 3, 3.1, seed=True)])
    assert winner.arch_id == "arch_001" and seed is None and "only the seed" in rule


def test_nothing_finished():
    assert choose([]) == (None, None, "no architecture completed wave-1 training")


def test_a_search_alone_compares_with_its_seed_configuration():
    candidates = sorted([finalist("cfg_seed", 3, 2.0, seed=True), finalist("cfg_a", 3, 1.5)],
                        key=lambda f: f.val_metric)
    winner, seed, _ = choose(candidates)
    assert winner.arch_id == "cfg_a" and seed.arch_id == "cfg_seed"


def test_every_finalist_gets_wave_2_unless_only_the_reported_ones_are_asked_for():
    import msgspec

    from agentnas.agents.final import finalists, wave2_wanted
    from agentnas.bus import messages as m
    from agentnas.bus.settings import ProxySettings
    from agentnas.store.state import replay
    from tests.agents.test_roles import RUN, STOPPED, ev, implemented, proposed, requested, wave1

    events = (requested() + proposed(1, "arch_001", "arch_002", "arch_003") + implemented("arch_001", 5.0)
              + implemented("arch_002", 6.0) + implemented("arch_003", 7.0) + STOPPED
              + wave1("arch_001", 4.0) + wave1("arch_002", 3.0)
              + [ev(m.SeedSelected(arch_id="arch_002", source="s", recipe={}, val_metric=3.0, eval_id="w"))])
    state = replay(RUN, events)
    assert [f.arch_id for f in wave2_wanted(state, finalists(state))] == ["arch_002", "arch_001"]  # PROTOCOL.md: both waves
    (run_requested,) = [e for e in events if e.kind == "run.requested"]
    settings = run_requested.payload.settings
    reported = msgspec.structs.replace(settings, proxy=ProxySettings(wave2="reported"))
    state = replay(RUN, [ev(m.RunRequested(task="addigits", phases=(1,), settings=reported), "cli")] + events[1:])
    assert [f.arch_id for f in wave2_wanted(state, finalists(state))] == ["arch_002"]  # Phase 1 alone: the winner is the seed
