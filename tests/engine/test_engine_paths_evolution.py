"""Paths (sub-steps, unlocks, rewards, manual completion) and evolution (SPEC §3 steps 4, 6)."""

from __future__ import annotations

from typing import Any

import pytest

import buddyrules as br
from buddyrules import EvolutionNotReady, ResourceNotFound, ValidationFailed
from buddyrules.engine.admin import (
    admin_complete_sub_step,
    admin_earn_coins,
    admin_evolve,
    admin_spend_coins,
)

from .helpers import Buddy, at, make_rulebook, trace_entry


def path_rulebook() -> br.Rulebook:
    return make_rulebook(
        badges=[{"key": "graduate"}],
        paths=[
            {
                "key": "p",
                "steps": [
                    {
                        "key": "one",
                        "reward": {"coins": 30, "badge": "graduate"},
                        "sub_steps": [
                            {"key": "a", "completion_condition": "event_count(lesson) >= 1"},
                            {"key": "b", "allow_manual_complete": True},
                        ],
                    },
                    {
                        "key": "two",
                        "unlock_condition": 'has_badge("graduate")',
                        "completion_condition": "event_count(quiz) >= 2",
                        "reward": {"coins": 5},
                    },
                    {"key": "three", "completion_condition": "event_count(quiz) >= 3"},
                    {"key": "four", "unlock_condition": "event_count(login) >= 1"},
                ],
            }
        ],
    )


def completed(buddy: Buddy) -> list[str]:
    return list(buddy.state.paths["p"].completed)


def changes(effects: br.Effects) -> list[dict[str, Any]]:
    return [dict(c) for c in effects.paths]


def test_path_sub_steps_steps_unlocks_and_rewards() -> None:
    rb = path_rulebook()
    buddy = Buddy.hatch(rb)
    first = buddy.send("lesson", at(0))
    assert {"path": "p", "step": "one", "sub_step": "a", "status": "completed"} in changes(first)
    assert buddy.state.paths["p"].sub_steps_done == ("one/a",)
    assert completed(buddy) == []
    # Quizzes do not complete "two" while it is locked.
    buddy.send("quiz", at(1))
    buddy.send("quiz", at(1, 1))
    assert "two" not in buddy.state.paths["p"].unlocked
    # The manual sub-step completes "one": its reward pays and awards the badge, which
    # unlocks "two", whose condition already holds, which unlocks "three".
    done = buddy.apply(admin_complete_sub_step(rb, buddy.state, "p", "one", "b"))
    assert done.effects.coins == 35
    assert done.effects.badges_awarded == ("graduate",)
    st = buddy.state.paths["p"]
    assert st.completed == ("one", "two")
    assert "three" in st.unlocked and "four" not in st.unlocked
    assert "path.step_completed" in [n.type for n in done.notifications]
    buddy.send("quiz", at(2))
    assert completed(buddy) == ["one", "two", "three"]
    # "four" has its own unlock condition and no sub-steps or completion condition.
    login = buddy.send("login", at(3))
    assert {"path": "p", "step": "four", "status": "completed"} in changes(login)
    assert completed(buddy) == ["one", "two", "three", "four"]
    assert buddy.state.coins == 35  # each reward once
    assert buddy.send("login", at(4)).paths == ()


def test_manual_completion_errors() -> None:
    rb = path_rulebook()
    state = br.new_buddy(rb, "u1")
    with pytest.raises(ValidationFailed):
        admin_complete_sub_step(rb, state, "p", "one", "a")  # no manual completion
    with pytest.raises(ResourceNotFound):
        admin_complete_sub_step(rb, state, "p", "one", "zzz")
    with pytest.raises(ResourceNotFound):
        admin_complete_sub_step(rb, state, "nope", "one", "b")


def test_a_manual_sub_step_completed_twice_changes_nothing() -> None:
    rb = path_rulebook()
    once = admin_complete_sub_step(rb, br.new_buddy(rb, "u1"), "p", "one", "b").state
    twice = admin_complete_sub_step(rb, once, "p", "one", "b")
    assert twice.state.paths == once.paths
    assert twice.effects.paths == ()


def evolution_rulebook(auto: bool) -> br.Rulebook:
    return make_rulebook(
        coin_rules=[{"key": "c", "event": "lesson", "amount": "props.n"}],
        evolution={
            "auto_evolve": auto,
            "stages": [
                {"name": "egg"},
                {"name": "chick", "when": "coins >= 10"},
                {"name": "hen", "when": "coins >= 20"},
            ],
        },
    )


def test_auto_evolve_advances_one_stage_per_event() -> None:
    buddy = Buddy.hatch(evolution_rulebook(auto=True))
    assert buddy.send("lesson", at(0), n=5).evolved_to is None
    first = buddy.send("lesson", at(1), n=50)
    assert first.evolved_to == 2 and buddy.state.stage == 2
    assert first.evolution_ready  # stage 3 already holds, but one stage per event
    assert "buddy.evolved" in [n.type for n in buddy.last.notifications]
    second = buddy.send("other", at(2))
    assert second.evolved_to == 3 and buddy.state.stage == 3
    assert not second.evolution_ready  # last stage
    assert buddy.send("other", at(3)).evolved_to is None


def test_evolution_never_goes_backwards() -> None:
    rb = evolution_rulebook(auto=True)
    buddy = Buddy.hatch(rb)
    buddy.send("lesson", at(0), n=15)
    assert buddy.state.stage == 2
    buddy.apply(admin_spend_coins(rb, buddy.state, 15, "shop"))
    assert buddy.state.coins == 0
    effects = buddy.send("other", at(1))
    assert buddy.state.stage == 2 and effects.evolved_to is None


def test_without_auto_evolve_readiness_is_reported_and_an_admin_evolves() -> None:
    rb = evolution_rulebook(auto=False)
    buddy = Buddy.hatch(rb)
    with pytest.raises(EvolutionNotReady):
        admin_evolve(rb, buddy.state)
    ready = buddy.send("lesson", at(0), n=10, explain=True)
    assert ready.evolution_ready and ready.evolved_to is None
    assert trace_entry(ready, "stage 2", "evolution")["fired"]
    assert [n.type for n in buddy.last.notifications].count("evolution.ready") == 1
    quiet = buddy.send("other", at(1))
    assert quiet.evolution_ready  # still true, reported on every event
    assert "evolution.ready" not in [n.type for n in buddy.last.notifications]
    evolved = buddy.apply(admin_evolve(rb, buddy.state))
    assert evolved.state.stage == 2
    assert not evolved.effects.evolution_ready
    with pytest.raises(EvolutionNotReady):
        admin_evolve(rb, buddy.state)
    buddy.apply(admin_earn_coins(rb, buddy.state, 10, "gift"))
    assert buddy.last.effects.evolution_ready
    buddy.apply(admin_evolve(rb, buddy.state))
    with pytest.raises(EvolutionNotReady):  # last stage
        admin_evolve(rb, buddy.state)
    assert buddy.state.stage == 3


def test_a_first_step_with_its_own_unlock_condition_starts_locked() -> None:
    rb = make_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson", "quiz"], "teacher": ["lesson", "quiz"]},
        paths=[
            {
                "key": "gated",
                "steps": [
                    {
                        "key": "s1",
                        "unlock_condition": "event_count(quiz) >= 1",
                        "reward": {"coins": 7},
                    }
                ],
            },
            {"key": "mentors", "audience": "teacher", "steps": [{"key": "m1"}]},
        ],
    )
    state = br.new_buddy(rb, "u1", "student")
    assert state.paths == {}  # neither open: one is gated, the other is for teachers
    buddy = Buddy(rb, state)
    effects = buddy.send("lesson", at(0), explain=True)
    assert effects.paths == ()
    assert trace_entry(effects, "gated/s1")["reason"] == "locked: unlock condition false"
    assert trace_entry(effects, "mentors", "path")["reason"].startswith("audience mismatch")
    unlocked = buddy.send("quiz", at(1))
    assert [dict(c) for c in unlocked.paths] == [
        {"path": "gated", "step": "s1", "status": "unlocked"},
        {"path": "gated", "step": "s1", "status": "completed"},
    ]
    assert unlocked.coins == 7
    teacher = br.new_buddy(rb, "u2", "teacher")
    assert teacher.paths["mentors"].unlocked == ("m1",)


def test_path_trace_explains_each_step() -> None:
    rb = path_rulebook()
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at(0), explain=True)
    assert trace_entry(effects, "p/one")["reason"] == "waiting for sub-steps: b"
    assert trace_entry(effects, "p/two")["reason"] == "locked: unlock condition false"
    assert trace_entry(effects, "p/two")["reads"]["badges"] == []
    assert trace_entry(effects, "p/three")["reason"] == (
        "locked: the previous step is not completed"
    )
    done = buddy.apply(admin_complete_sub_step(rb, buddy.state, "p", "one", "b"))
    assert done.effects.paths
    later = buddy.send("quiz", at(1), explain=True)
    assert trace_entry(later, "p/one")["reason"] == "already completed"
    assert trace_entry(later, "p/two")["reason"] == "completion condition false"


def test_a_failing_stage_condition_is_reported() -> None:
    rb = make_rulebook(
        evolution={"stages": [{"name": "egg"}, {"name": "chick", "when": "props.n > 1"}]}
    )
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at(), explain=True)
    assert [p["rule"] for p in effects.problems] == ["evolution.stages[1]"]
    entry = trace_entry(effects, "stage 2", "evolution")
    assert entry["reason"].startswith("evaluation problem")
    assert entry["reads"] == {"props.n": "<missing>"}
    ready = buddy.send("lesson", at(), n=2)
    assert ready.evolution_ready and ready.problems == ()
