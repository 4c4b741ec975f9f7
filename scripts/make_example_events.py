"""Generate the example event logs: ``rules_examples/<name>/events.jsonl``.

Each example rulebook ships with a realistic event log that the tests replay and that users can
feed to ``buddyrules run`` or ``buddyrules simulate``. The logs are checked in; this script
documents how they were made and regenerates them byte for byte:

    python scripts/make_example_events.py            # rewrite every events.jsonl
    python scripts/make_example_events.py --check    # exit 1 if a checked-in file is stale
    python scripts/make_example_events.py fitness    # only some examples

It is pure standard library, seeded (one ``random.Random`` per example) and reads no clock: every
date comes from the constants below. Users get a persona (devoted, regular, casual, lapsing,
dropping out, ...) that decides how often they show up, so the logs contain long streaks, burned
streaks, bursts that hit daily caps and properties that sometimes meet a rule's threshold.

One line per event, sorted by ``occurred_at`` (then user and type): ``event_id`` (unique),
``user_id``, ``audience`` (only in the classroom example, which has two audiences), ``type``,
``occurred_at`` (ISO-8601; ``Z`` for UTC, or the local offset in the fitness example) and
``properties``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

__all__ = ["EXAMPLES", "GENERATORS", "Draft", "generate", "main", "render"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rules_examples"

Props = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before it is numbered: ``at`` is an aware local datetime."""

    user_id: str
    type: str
    at: datetime
    properties: Props = field(default_factory=dict)
    audience: str | None = None


# -- shared helpers ---------------------------------------------------------------------------


def clamp(value: float, lo: float, hi: float) -> float:
    """``value`` limited to ``[lo, hi]``."""
    return max(lo, min(hi, value))


def weighted(rng: random.Random, options: Sequence[tuple[T, float]]) -> T:
    """One of ``options`` (value, weight) drawn by weight."""
    values = [v for v, _ in options]
    weights = [w for _, w in options]
    return rng.choices(values, weights=weights, k=1)[0]


def at_local(day: date, hour: float, tz: ZoneInfo) -> datetime:
    """An aware datetime on ``day`` at ``hour`` (fractional hours allowed) in ``tz``.

    Callers keep hours between 6 and 23, away from the 02:00-03:00 DST gap.
    """
    seconds = round(hour * 3600)
    return datetime.combine(day, time(seconds // 3600, seconds // 60 % 60, seconds % 60), tz)


def random_hour(rng: random.Random, lo: float, hi: float) -> float:
    """A time of day between ``lo`` and ``hi`` hours, to the second."""
    return round(rng.uniform(lo, hi) * 3600) / 3600


@dataclass(frozen=True, slots=True)
class Presence:
    """When a user is around: from ``start`` to ``end`` (day indexes), minus lapses."""

    start: int
    end: int
    lapses: tuple[tuple[int, int], ...] = ()

    def around(self, day: int) -> bool:
        """Whether the user uses the app at all on day ``day``."""
        if not self.start <= day < self.end:
            return False
        return not any(first <= day < first + length for first, length in self.lapses)


def lapses(
    rng: random.Random, n_days: int, count: int, lo: int, hi: int
) -> tuple[tuple[int, int], ...]:
    """``count`` lapses of ``lo``-``hi`` days, placed after the first week."""
    out: list[tuple[int, int]] = []
    for _ in range(count):
        length = rng.randint(lo, hi)
        out.append((rng.randint(7, max(8, n_days - length - 3)), length))
    return tuple(sorted(out))


# -- language learning ------------------------------------------------------------------------
# UTC, five weeks. Daily lessons feed a daily streak; logins pay 2 coins once a day.

LL_START = date(2025, 2, 3)
LL_DAYS = 35
LL_TZ = ZoneInfo("UTC")

LL_PERSONAS: tuple[tuple[str, float], ...] = (
    ("devoted", 0.2),
    ("regular", 0.3),
    ("casual", 0.2),
    ("lapser", 0.18),
    ("dropout", 0.12),
)
# persona -> (chance of a session on a day the user is around, lessons per session, quiz chance)
LL_RATES: dict[str, tuple[float, tuple[int, int], float]] = {
    "devoted": (0.93, (1, 2), 0.25),
    "regular": (0.45, (1, 2), 0.25),
    "casual": (0.3, (1, 2), 0.2),
    "lapser": (0.8, (1, 2), 0.25),
    "dropout": (0.8, (1, 2), 0.25),
}
LL_DIFFICULTY = (("vocabulary", 0.35), ("grammar", 0.3), ("speaking", 0.2), ("listening", 0.15))


def language_learning(rng: random.Random) -> list[Draft]:
    """Learners doing lessons, quizzes and modules (one audience, so no ``audience``)."""
    drafts: list[Draft] = []
    for n in range(1, 31):
        user = f"learner_{n:03d}"
        persona = weighted(rng, LL_PERSONAS)
        p_session, (lo, hi), p_quiz = LL_RATES[persona]
        start = rng.randint(0, 3) if persona != "casual" else rng.randint(0, 12)
        end = LL_DAYS
        gaps: tuple[tuple[int, int], ...] = ()
        if persona == "lapser":
            gaps = lapses(rng, LL_DAYS, rng.randint(1, 2), 3, 8)
        elif persona == "dropout":
            end = start + rng.randint(7, 16)
        presence = Presence(start, end, gaps)
        ability = rng.uniform(0.68, 0.93)  # the learner's typical lesson score
        platform = weighted(rng, (("ios", 0.45), ("android", 0.4), ("web", 0.15)))
        lessons = 0
        for d in range(LL_DAYS):
            if not presence.around(d) or rng.random() > p_session:
                continue
            day = LL_START + timedelta(days=d)
            hour = random_hour(rng, 6.5, 21.5)
            # Half the sessions start from a reminder, without a login; a second login later
            # the same day pays nothing (the login coins' daily cap).
            logins = weighted(rng, ((0, 0.5), (1, 0.42), (2, 0.08)))
            login_hours = [hour, min(23.5, hour + rng.uniform(1, 6))][:logins]
            for login_hour in login_hours:
                when = at_local(day, login_hour, LL_TZ)
                drafts.append(Draft(user, "daily_login", when, {"platform": platform}))
            count = rng.randint(lo, hi)
            if persona == "devoted" and rng.random() < 0.12:
                count = rng.randint(5, 7)  # a binge day: the 50-coin daily cap clips it
            t = hour
            for _ in range(count):
                t += rng.uniform(0.12, 0.35)
                score = round(clamp(rng.gauss(ability, 0.08), 0.3, 1.0), 2)
                props: Props = {
                    "lesson_id": f"es-{lessons // 8 + 1}-{lessons % 8 + 1}",
                    "difficulty": weighted(rng, LL_DIFFICULTY),
                    "score": score,
                    "minutes": rng.randint(5, 15),
                }
                drafts.append(Draft(user, "lesson_completed", at_local(day, t, LL_TZ), props))
                lessons += 1
                if lessons % 8 == 0:
                    t += 0.01
                    drafts.append(
                        Draft(
                            user,
                            "module_finished",
                            at_local(day, t, LL_TZ),
                            {"module": f"es-{lessons // 8}", "lessons": 8},
                        )
                    )
            if rng.random() < p_quiz:
                t += rng.uniform(0.1, 0.3)
                score = round(clamp(rng.gauss(ability + 0.03, 0.07), 0.6, 1.0), 2)
                drafts.append(
                    Draft(
                        user,
                        "quiz_passed",
                        at_local(day, t, LL_TZ),
                        {"quiz_id": f"q-{lessons // 8 + 1}", "score": score},
                    )
                )
    return drafts


# -- fitness ------------------------------------------------------------------------------------
# Europe/Berlin, eight ISO weeks (crossing the switch to summer time on 30 March 2025).

FIT_START = date(2025, 3, 3)  # a Monday
FIT_WEEKS = 8
FIT_TZ = ZoneInfo("Europe/Berlin")

FIT_PERSONAS: tuple[tuple[str, float], ...] = (
    ("devoted", 0.2),
    ("regular", 0.3),
    ("weekend", 0.15),
    ("lapser", 0.2),
    ("late_starter", 0.15),
)
# persona -> (workouts per week, chance of a double session, chance of a manual step sync per
# day; athletes wearing a watch sync almost every evening instead)
FIT_RATES: dict[str, tuple[tuple[int, int], float, float]] = {
    "devoted": ((4, 6), 0.15, 0.3),
    "regular": ((2, 4), 0.05, 0.15),
    "weekend": ((1, 2), 0.0, 0.1),
    "lapser": ((2, 4), 0.05, 0.15),
    "late_starter": ((2, 4), 0.05, 0.15),
}
FIT_STYLES: dict[str, tuple[tuple[str, float], ...]] = {
    "runner": (("run", 0.7), ("strength", 0.15), ("yoga", 0.15)),
    "lifter": (("strength", 0.7), ("hiit", 0.2), ("run", 0.1)),
    "hybrid": (("run", 0.3), ("strength", 0.3), ("hiit", 0.2), ("yoga", 0.2)),
    "cyclist": (("ride", 0.7), ("strength", 0.15), ("run", 0.15)),
    "swimmer": (("swim", 0.6), ("strength", 0.2), ("yoga", 0.2)),
    "yogi": (("yoga", 0.7), ("run", 0.15), ("hiit", 0.15)),
}
# kind -> (mean minutes, sd, mean heart rate, sd)
FIT_KINDS: dict[str, tuple[float, float, float, float]] = {
    "run": (42, 12, 152, 9),
    "ride": (70, 25, 140, 10),
    "swim": (40, 10, 136, 8),
    "strength": (55, 12, 124, 10),
    "hiit": (30, 8, 162, 8),
    "yoga": (45, 12, 96, 8),
}
FIT_EXERCISES = {
    "endurance": ("5k", "10k", "40k ride", "1500m swim"),
    "strength": ("deadlift", "squat", "bench press", "pull-ups"),
}


def _workout(rng: random.Random, kind: str, long_day: bool) -> Props:
    mean_min, sd_min, mean_hr, sd_hr = FIT_KINDS[kind]
    minutes = rng.gauss(mean_min, sd_min)
    if long_day and kind in ("run", "ride"):
        minutes *= rng.uniform(1.6, 2.4)  # the long Sunday session
    return {
        "kind": kind,
        "minutes": int(clamp(minutes, 10, 240)),
        "heart_rate": int(clamp(rng.gauss(mean_hr, sd_hr), 70, 195)),
    }


def fitness(rng: random.Random) -> list[Draft]:
    """Athletes logging workouts, syncing steps and setting personal records."""
    drafts: list[Draft] = []
    for n in range(1, 31):
        user = f"athlete_{n:02d}"
        persona = weighted(rng, FIT_PERSONAS)
        (lo, hi), p_double, p_steps = FIT_RATES[persona]
        style = rng.choice(sorted(FIT_STYLES))
        watch = rng.random() < 0.3
        first_week = rng.randint(2, 4) if persona == "late_starter" else 0
        off_weeks: set[int] = set()
        if persona == "lapser":  # one or two breaks of one to three whole weeks
            for _ in range(rng.randint(1, 2)):
                w = rng.randint(1, FIT_WEEKS - 2)
                off_weeks.update(range(w, min(FIT_WEEKS, w + rng.randint(1, 3))))
        step_mean = {"devoted": 10500, "regular": 8000}.get(persona, 6000)
        for w in range(first_week, FIT_WEEKS):
            monday = FIT_START + timedelta(weeks=w)
            if w in off_weeks:
                workout_days: list[int] = []
            elif persona == "weekend":
                workout_days = rng.sample([5, 6], rng.randint(lo, hi))
            else:
                workout_days = rng.sample(range(7), rng.randint(lo, hi))
            for wd in range(7):
                day = monday + timedelta(days=wd)
                if wd in workout_days:
                    sessions = 2 if rng.random() < p_double else 1
                    hours = sorted(
                        rng.sample([random_hour(rng, 6, 8.5), random_hour(rng, 17, 20.5)], sessions)
                    )
                    for hour in hours:
                        kind = weighted(rng, FIT_STYLES[style])
                        props = _workout(rng, kind, long_day=wd == 6 and sessions == 1)
                        when = at_local(day, hour, FIT_TZ)
                        drafts.append(Draft(user, "workout_logged", when, props))
                        if kind != "yoga" and rng.random() < 0.08:
                            discipline = "strength" if kind == "strength" else "endurance"
                            if kind == "hiit":
                                discipline = rng.choice(["strength", "endurance"])
                            record = {
                                "discipline": discipline,
                                "exercise": rng.choice(FIT_EXERCISES[discipline]),
                                "improvement_pct": round(rng.uniform(0.5, 8.0), 1),
                            }
                            drafts.append(
                                Draft(
                                    user,
                                    "personal_record",
                                    when + timedelta(minutes=props["minutes"] + 5),
                                    record,
                                )
                            )
                p = 0.95 if watch else p_steps
                if w in off_weeks:
                    p *= 0.5
                if rng.random() < p:
                    steps = int(clamp(rng.gauss(step_mean, 3000), 600, 26000))
                    when = at_local(day, random_hour(rng, 20.5, 23.5), FIT_TZ)
                    drafts.append(Draft(user, "steps_synced", when, {"steps": steps}))
    return drafts


# -- shop loyalty -------------------------------------------------------------------------------
# America/Chicago, eight weeks from mid-January, so a customer can shop in three months.

SHOP_START = date(2025, 1, 13)
SHOP_DAYS = 56
SHOP_TZ = ZoneInfo("America/Chicago")

SHOP_PERSONAS: tuple[tuple[str, float], ...] = (
    ("whale", 0.08),
    ("frequent", 0.22),
    ("occasional", 0.3),
    ("browser", 0.18),
    ("reviewer", 0.12),
    ("referrer", 0.1),
)
# persona -> (purchases per week, median basket in dollars, app opens per day, review chance)
SHOP_RATES: dict[str, tuple[float, float, float, float]] = {
    "whale": (2.2, 130.0, 0.5, 0.2),
    "frequent": (1.1, 60.0, 0.3, 0.15),
    "occasional": (0.4, 45.0, 0.08, 0.1),
    "browser": (0.15, 35.0, 0.45, 0.05),
    "reviewer": (0.8, 50.0, 0.2, 0.75),
    "referrer": (0.6, 55.0, 0.2, 0.15),
}
SHOP_CATEGORIES = (
    ("grocery", 0.25),
    ("apparel", 0.2),
    ("home", 0.18),
    ("eco", 0.15),
    ("books", 0.12),
    ("electronics", 0.1),
)

SHOP_SCREENS = (("home", 0.6), ("deals", 0.2), ("orders", 0.1), ("search", 0.1))


def shop_loyalty(rng: random.Random) -> list[Draft]:
    """Customers shopping, reviewing, referring friends and opening the app."""
    drafts: list[Draft] = []
    for n in range(1, 51):
        user = f"cust_{1000 + n * 7}"
        persona = weighted(rng, SHOP_PERSONAS)
        per_week, median, p_open, p_review = SHOP_RATES[persona]
        favourite = weighted(rng, SHOP_CATEGORIES)
        start = rng.randint(0, 20)
        orders = 0
        for d in range(start, SHOP_DAYS):
            day = SHOP_START + timedelta(days=d)
            weekend = day.weekday() >= 5
            opens = 0
            if rng.random() < p_open * (1.3 if weekend else 1.0):
                opens = 2 if rng.random() < 0.25 else 1
            for _ in range(opens):
                when = at_local(day, random_hour(rng, 7, 22.5), SHOP_TZ)
                screen = weighted(rng, SHOP_SCREENS)
                drafts.append(Draft(user, "app_opened", when, {"screen": screen}))
            if rng.random() >= per_week / 7:
                continue
            orders += 1
            category = favourite if rng.random() < 0.45 else weighted(rng, SHOP_CATEGORIES)
            amount = rng.lognormvariate(0, 0.6) * median * (2.5 if category == "electronics" else 1)
            amount = round(clamp(amount, 4.99, 950.0), 2)
            when = at_local(day, random_hour(rng, 8, 22), SHOP_TZ)
            props: Props = {
                "order_id": f"ord-{n:02d}-{orders:03d}",
                "amount": amount,
                "currency": "USD",
                "category": category,
                "items": max(1, int(amount // 25) + rng.randint(0, 2)),
            }
            drafts.append(Draft(user, "purchase_completed", when, props))
            if rng.random() < p_review:
                later = day + timedelta(days=rng.randint(2, 6))
                if later < SHOP_START + timedelta(days=SHOP_DAYS):
                    review = {
                        "order_id": props["order_id"],
                        "rating": weighted(
                            rng, ((5, 0.45), (4, 0.3), (3, 0.12), (2, 0.07), (1, 0.06))
                        ),
                        "words": int(clamp(rng.lognormvariate(3.5, 0.7), 3, 600)),
                        "photos": weighted(
                            rng, ((0, 0.55), (1, 0.2), (2, 0.13), (3, 0.07), (4, 0.05))
                        ),
                    }
                    review_at = at_local(later, random_hour(rng, 9, 22.5), SHOP_TZ)
                    drafts.append(Draft(user, "review_posted", review_at, review))
        referrals = rng.randint(2, 6) if persona == "referrer" else int(rng.random() < 0.06)
        for r in range(referrals):
            d = rng.randint(start, SHOP_DAYS - 1)
            when = at_local(SHOP_START + timedelta(days=d), random_hour(rng, 8, 22), SHOP_TZ)
            friend = f"friend_{n:02d}_{r + 1}"
            drafts.append(Draft(user, "referral_signed_up", when, {"referred_user": friend}))
    return drafts


# -- classroom ----------------------------------------------------------------------------------
# Europe/London, the six school weeks from 6 January to 14 February 2025. Two audiences.

CLS_START = date(2025, 1, 6)  # a Monday
CLS_WEEKS = 6
CLS_TZ = ZoneInfo("Europe/London")
CLS_SUBJECTS = ("math", "writing", "science")

CLS_PERSONAS: tuple[tuple[str, float], ...] = (
    ("diligent", 0.25),
    ("average", 0.35),
    ("struggling", 0.2),
    ("helper", 0.2),
)
# persona -> (assignments per week, mean grade, chance of handing in late, peer help per week)
CLS_RATES: dict[str, tuple[tuple[int, int], float, float, float]] = {
    "diligent": ((3, 5), 86.0, 0.03, 0.4),
    "average": ((2, 4), 74.0, 0.15, 0.3),
    "struggling": ((1, 3), 62.0, 0.35, 0.1),
    "helper": ((2, 4), 80.0, 0.1, 2.5),
}


def _student(rng: random.Random, user: str, persona: str, sick_week: int | None) -> list[Draft]:
    drafts: list[Draft] = []
    (lo, hi), grade_mean, p_late, helps = CLS_RATES[persona]
    for w in range(CLS_WEEKS):
        if w == sick_week:
            continue
        monday = CLS_START + timedelta(weeks=w)
        for _ in range(rng.randint(lo, hi)):
            wd = weighted(rng, ((0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (6, 0.5)))
            hour = random_hour(rng, 16, 22.5) if wd == 6 else random_hour(rng, 15.5, 21.5)
            subject = rng.choice(CLS_SUBJECTS)
            props: Props = {
                "assignment_id": f"{subject}-w{w + 1}-{rng.randint(1, 3)}",
                "subject": subject,
                "grade": int(clamp(rng.gauss(grade_mean, 9), 15, 100)),
                "on_time": rng.random() >= p_late,
            }
            when = at_local(monday + timedelta(days=wd), hour, CLS_TZ)
            drafts.append(Draft(user, "assignment_submitted", when, props, "student"))
        for _ in range(rng.randint(1, 2)):  # quizzes happen in class
            subject = rng.choice(CLS_SUBJECTS)
            score = round(clamp(rng.gauss(grade_mean / 100 + 0.04, 0.1), 0.2, 1.0), 2)
            when = at_local(
                monday + timedelta(days=rng.randint(0, 4)), random_hour(rng, 9, 15), CLS_TZ
            )
            quiz = {"quiz_id": f"{subject}-q{w + 1}", "subject": subject, "score": score}
            drafts.append(Draft(user, "quiz_completed", when, quiz, "student"))
        n_help = int(helps) + (1 if rng.random() < helps % 1 else 0)
        for _ in range(n_help):
            when = at_local(
                monday + timedelta(days=rng.randint(0, 4)), random_hour(rng, 10, 16), CLS_TZ
            )
            help_props = {"subject": rng.choice(CLS_SUBJECTS), "minutes": rng.randint(10, 40)}
            drafts.append(Draft(user, "peer_helped", when, help_props, "student"))
    return drafts


def _teacher(
    rng: random.Random, user: str, subject: str, classes: tuple[int, int], slack_week: int | None
) -> list[Draft]:
    drafts: list[Draft] = []
    prep_minutes = rng.randint(30, 60)
    for w in range(CLS_WEEKS):
        monday = CLS_START + timedelta(weeks=w)
        for wd in range(5):
            day = monday + timedelta(days=wd)
            n_classes = rng.randint(*classes)
            hours = sorted(rng.sample([9.0, 10.25, 11.5, 13.5, 14.75], n_classes))
            for hour in hours:
                props: Props = {"subject": subject, "students_present": rng.randint(18, 30)}
                drafts.append(
                    Draft(user, "class_taught", at_local(day, hour, CLS_TZ), props, "teacher")
                )
            if rng.random() < 0.7:
                prep = {
                    "subject": subject,
                    "differentiated": rng.random() < 0.4,
                    "minutes": int(clamp(rng.gauss(prep_minutes, 15), 10, 120)),
                }
                when = at_local(day, random_hour(rng, 16, 19), CLS_TZ)
                drafts.append(Draft(user, "lesson_prepared", when, prep, "teacher"))
            if w == slack_week or rng.random() < 0.25:
                continue  # a week buried in reports: no marking at all
            for _ in range(rng.randint(1, 2)):
                feedback = {
                    "subject": subject,
                    "comments": rng.randint(2, 18),
                    "turnaround_hours": round(rng.lognormvariate(3.0, 0.6), 1),
                }
                when = at_local(day, random_hour(rng, 15.5, 21), CLS_TZ)
                drafts.append(Draft(user, "feedback_given", when, feedback, "teacher"))
    return drafts


def classroom(rng: random.Random) -> list[Draft]:
    """Students (homework, quizzes, peer help) and teachers (prep, feedback, classes)."""
    drafts: list[Draft] = []
    for n in range(1, 31):
        persona = weighted(rng, CLS_PERSONAS)
        sick_week = rng.randint(1, CLS_WEEKS - 1) if rng.random() < 0.35 else None
        drafts += _student(rng, f"student_{n:02d}", persona, sick_week)
    for n, subject in enumerate(("math", "writing", "science", "math", "science"), start=1):
        slack_week = rng.randint(1, CLS_WEEKS - 1) if n in (2, 5) else None
        drafts += _teacher(rng, f"teacher_{n:02d}", subject, (1, 2), slack_week)
    # A trainee teacher: a student on the teacher-training course and a teacher of one class a
    # day, so the same user has one buddy per audience.
    drafts += _student(rng, "trainee_01", "diligent", None)
    drafts += _teacher(rng, "trainee_01", "writing", (0, 1), None)
    return drafts


# -- output ------------------------------------------------------------------------------------

# name -> (seed, event id prefix, generator, emit the local offset rather than Z)
GENERATORS: dict[str, tuple[int, str, Callable[[random.Random], list[Draft]], bool]] = {
    "language_learning": (20250203, "ll", language_learning, False),
    "fitness": (20250303, "fit", fitness, True),
    "shop_loyalty": (20250113, "shop", shop_loyalty, False),
    "classroom": (20250106, "cls", classroom, False),
}


def _timestamp(at: datetime, local_offset: bool) -> str:
    if local_offset:
        return at.isoformat(timespec="seconds")
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def generate(name: str) -> list[dict[str, Any]]:
    """The events of example ``name``, sorted by time, as wire dicts."""
    seed, prefix, make, local_offset = GENERATORS[name]
    drafts = make(random.Random(seed))
    order = sorted(
        range(len(drafts)),
        key=lambda i: (drafts[i].at.astimezone(UTC), drafts[i].user_id, drafts[i].type, i),
    )
    events: list[dict[str, Any]] = []
    for number, i in enumerate(order, start=1):
        d = drafts[i]
        event: dict[str, Any] = {"event_id": f"{prefix}-{number:05d}", "user_id": d.user_id}
        if d.audience is not None:
            event["audience"] = d.audience
        event["type"] = d.type
        event["occurred_at"] = _timestamp(d.at, local_offset)
        event["properties"] = d.properties
        events.append(event)
    return events


def render(name: str) -> str:
    """The ``events.jsonl`` text of example ``name``."""
    return "".join(
        json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n" for e in generate(name)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the example event logs; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(GENERATORS))
    parser.add_argument("--check", action="store_true", help="only check the files are current")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in GENERATORS]
    if unknown:
        parser.error(f"unknown example(s): {', '.join(unknown)}")
    stale = 0
    for name in args.names or list(GENERATORS):
        path = EXAMPLES / name / "events.jsonl"
        text = render(name)
        users = {json.loads(line)["user_id"] for line in text.splitlines()}
        summary = f"{path.relative_to(ROOT)}: {text.count(chr(10))} events, {len(users)} users"
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else None
            if current != text:
                stale += 1
                print(f"stale: {summary}", file=sys.stderr)
            continue
        path.write_text(text, encoding="utf-8", newline="\n")
        print(summary)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
