"""Deterministic synthetic data for the Epic 5 baseline tables.

Fills a database that is at the baseline migration (the eight tables the Epic 5
migration touches) with realistic rows, entirely server side: one
``INSERT ... SELECT ... FROM generate_series(...)`` per table. Every
pseudo-random value is ``hashint8extended(row, salt)`` mapped to [0, 1), with
salts derived from the seed, so the data depends only on (seed, scale,
anomalies) -- never on execution order, parallel workers or the clock.

    python devstack/generate_data.py --db URL [--seed 42]
        [--scale N | --preset small|demo|bench] [--orphans K]
        [--null-topic-ids K] [--truncate] [--json]

Anomalies for the deployment gates: ``--orphans K`` adds K
``experiment_assignments`` rows pointing at experiments that do not exist
(the Epic 5 foreign key then fails); ``--null-topic-ids K`` gives K
``struggle_predictions`` rows a NULL ``topicId``. Without them the data is clean.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg

REFERENCE_DATE = "2025-10-01 00:00:00"  # fixed "now" of the data set
PRESETS: dict[str, float] = {"small": 1.0, "demo": 10.0, "bench": 1000.0}
TABLES: tuple[str, ...] = (  # insertion order (assignments join experiments)
    "personalization_experiments", "experiment_assignments", "behavioral_events",
    "behavioral_patterns", "struggle_predictions", "recommendations",
    "personalization_configs", "study_schedule_recommendations",
)
EVENT_WEIGHTS: dict[str, float] = {
    "CARD_REVIEWED": 0.40, "SESSION_STARTED": 0.12, "SESSION_ENDED": 0.11,
    "VALIDATION_COMPLETED": 0.10, "MISSION_STARTED": 0.09, "SEARCH_PERFORMED": 0.09,
    "MISSION_COMPLETED": 0.07, "LECTURE_UPLOADED": 0.02,
}
# Relative activity per hour of day (0-23): quiet nights, a study peak at 19-21.
HOUR_WEIGHTS = (2, 1, .5, .3, .3, .5, 1.5, 3, 4, 4.5, 4.5, 4, 4, 4.5, 4.5, 4.5,
                5, 6, 7.5, 9, 10, 9, 6, 3.5)
HEAVY_SHARE, HEAVY_USERS = 0.2, 0.05  # 20% of rows come from 5% of users
MAX_SCALE, MAX_ANOMALIES = 10_000.0, 9_999  # keeps 'user_%06d', 'exp_missing_%04d' and ids unique
TABLE_LIST = ", ".join(f'"{t}"' for t in TABLES)


class GenerateError(Exception):
    """A refusal or failure to report to the user (exit code in ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Sizes:
    """Row counts (before anomalies) for one scale factor."""

    users: int
    topics: int
    experiments: int
    assignments: int
    events: int
    patterns: int
    predictions: int
    recommendations: int
    configs: int
    schedules: int

    @property
    def per_user(self) -> int:
        """Experiments per assigned user (never more than there are experiments)."""
        return min(self.experiments, math.ceil(self.assignments / self.users))


def sizes_for(scale: float) -> Sizes:
    """Row counts for ``scale`` (1 = the small preset); users grow sub-linearly."""
    def rows(base: int, power: float = 1.0) -> int:
        return max(1, round(base * scale ** power))
    users, experiments = max(10, rows(200, 0.75)), min(60, max(4, rows(24, 0.1)))
    return Sizes(users=users, topics=max(10, rows(60, 0.5)), experiments=experiments,
                 assignments=min(rows(500), users * experiments), events=max(8, rows(2000)),
                 patterns=rows(300), predictions=rows(400), recommendations=rows(300),
                 configs=rows(250), schedules=rows(200))


def resolve_scale(scale: str | float | int) -> float:
    """A preset name or a positive number -> the scale factor."""
    if isinstance(scale, str) and scale in PRESETS:
        return PRESETS[scale]
    try:
        value = float(scale)
    except ValueError:
        raise GenerateError(f"unknown scale {scale!r}: use a number or one of {sorted(PRESETS)}", 2) from None
    if not 0 < value <= MAX_SCALE:
        raise GenerateError(f"scale must be in (0, {MAX_SCALE:g}], got {scale!r}", 2)
    return value


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (URL or key=value DSN)."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _scrub(message: str, url: str) -> str:
    """Remove the URL's password (raw or percent-decoded) from ``message``."""
    message = message.replace(url, mask_url(url))
    password = urlsplit(url).password if "://" in url else None
    for secret in {password, unquote(password or "")} - {None, ""}:
        message = message.replace(secret, "***")
    return message


# --- SQL building blocks -----------------------------------------------------

def _salt(seed: int, table: str, stream: str) -> int:
    """A positive 63-bit salt for one random stream of one table."""
    digest = hashlib.sha256(f"{seed}/{table}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _unit(var: str, salt: int) -> str:
    """SQL for a uniform float8 in [0, 1) from the 53 high bits of a hash."""
    return f"(((hashint8extended({var}, {salt}) >> 11) & 9007199254740991)::float8 / 9007199254740992.0::float8)"


class _Streams:
    """Template helper: ``{u[name]}`` is an independent uniform per row of ``var``."""

    def __init__(self, seed: int, table: str, var: str) -> None:
        self.seed, self.table, self.var = seed, table, var

    def __getitem__(self, name: str) -> str:
        return _unit(self.var, _salt(self.seed, self.table, name))


def _id(seed: int, table: str, var: str = "i") -> str:
    """SQL for a cuid-like id: 'c' + 16 hash hex + 8 hex of a bijection of the row number."""
    mix = _salt(seed, table, "id-mix") & 0xFFFFFFFF
    return (f"('c' || lpad(to_hex(hashint8extended({var}, {_salt(seed, table, 'id')})), 16, '0')"
            f" || lpad(to_hex((({var} * 2654435761) # {mix}) & 4294967295), 8, '0'))")


def _cuts(weights: tuple[float, ...] | list[float]) -> str:
    """Cumulative thresholds for ``width_bucket(u, cuts)`` -> 0-based category."""
    total, acc, cuts = sum(weights), 0.0, []
    for w in weights[:-1]:
        acc += w
        cuts.append(f"{acc / total:.6f}")
    return "ARRAY[" + ",".join(cuts) + "]::float8[]"


def _user(u: _Streams, users: int) -> str:
    """SQL for a skewed user index: a few heavy users, a long tail of light ones."""
    heavy = max(1, round(users * HEAVY_USERS))
    return (f"(CASE WHEN {u['heavy']} < {HEAVY_SHARE} THEN floor({u['user']} * {heavy})"
            f" ELSE floor({u['user']} * {users}) END)::bigint")


USER_ID = "'user_' || lpad(uidx::text, 6, '0')"

# --- one template per table --------------------------------------------------
# Placeholders: {id} {uidx} {n} {ref} {u[stream]} (row level, var i) and
# {uu[stream]} (user level, var uidx: the same trait in every table).

TEMPLATES: dict[str, str] = {}
TEMPLATES["personalization_experiments"] = """
INSERT INTO "personalization_experiments" ("id", "name", "description", "context", "variantA", "variantB",
  "startDate", "endDate", "targetUserCount", "minParticipants", "successMetric", "winningVariant",
  "statisticalSignificance", "createdAt", "updatedAt")
SELECT id, initcap(ctx) || ' ' || replace(sa, '_', ' ') || ' vs ' || replace(sb, '_', ' ') || ' #' || i,
  CASE WHEN {u[desc]} < 0.8 THEN 'Does the ' || sb || ' strategy beat ' || sa || ' for ' || lower(ctx) || ' personalization?' END,
  ctx, jsonb_build_object('strategy', sa, 'intensity', round({u[ia]}::numeric, 2)),
  jsonb_build_object('strategy', sb, 'intensity', round({u[ib]}::numeric, 2)),
  start_at, end_at, 50 * (1 + floor({u[target]} * 20))::int, 20,
  (ARRAY['retention', 'performance', 'engagement', 'satisfaction'])[1 + floor({u[metric]} * 4)::int],
  CASE WHEN end_at < TIMESTAMP '{ref}' AND {u[win]} < 0.8 THEN CASE WHEN {u[ab]} < 0.5 THEN 'A' ELSE 'B' END END,
  CASE WHEN end_at < TIMESTAMP '{ref}' THEN round((0.001 + 0.2 * {u[p]})::numeric, 4)::float8 END,
  start_at - interval '2 days', least(TIMESTAMP '{ref}', coalesce(end_at, TIMESTAMP '{ref}' - interval '1 day'))
FROM (
  SELECT i, {id} AS id, (ARRAY['SESSION', 'CONTENT', 'ASSESSMENT', 'MISSION'])[1 + (i - 1) % 4] AS ctx,
    (ARRAY['pattern_heavy', 'balanced', 'spaced_review'])[1 + floor({u[sa]} * 3)::int] AS sa,
    (ARRAY['prediction_heavy', 'adaptive_difficulty', 'short_sessions'])[1 + floor({u[sb]} * 3)::int] AS sb,
    TIMESTAMP '{ref}' - make_interval(days => 7 + floor({u[start]} * 120)::int) AS start_at
  FROM generate_series(1::bigint, {n}) AS i) g
CROSS JOIN LATERAL (SELECT CASE WHEN {u[ended]} < 0.7  -- 70% have an end date, some still in the future
  THEN start_at + make_interval(days => 14 + floor({u[len]} * 28)::int) END AS end_at) x
"""
TEMPLATES["experiment_assignments"] = """
INSERT INTO "experiment_assignments" ("id", "userId", "experimentId", "variant", "assignedAt")
SELECT g.id, {user_id}, e."id", CASE WHEN {u[variant]} < 0.5 THEN 'A' ELSE 'B' END,
  e."startDate" + (coalesce(e."endDate", TIMESTAMP '{ref}') - e."startDate") * (0.6 * {u[at]})
FROM (
  SELECT i, {id} AS id, ((i - 1) / {per_user}) * {users} / {assigned_users} AS uidx,
    ((i - 1) % {per_user} + ((i - 1) / {per_user}) * 7) % {experiments} + 1 AS j
  FROM generate_series(1::bigint, {n}) AS i) g
JOIN "personalization_experiments" e ON e."id" = {experiment_id}
UNION ALL
SELECT {id}, 'user_' || lpad(floor({u[orphan_user]} * {users})::bigint::text, 6, '0'),
  'exp_missing_' || lpad((i - {n})::text, 4, '0'), CASE WHEN {u[variant]} < 0.5 THEN 'A' ELSE 'B' END,
  TIMESTAMP '{ref}' - make_interval(days => 1 + floor({u[at]} * 60)::int)
FROM generate_series({n} + 1::bigint, {n} + {orphans}) AS i
"""
TEMPLATES["behavioral_events"] = """
INSERT INTO "behavioral_events" ("id", "userId", "eventType", "eventData", "timestamp",
  "sessionPerformanceScore", "engagementLevel", "completionQuality", "timeOfDay", "dayOfWeek",
  "contentType", "difficultyLevel")
SELECT id, {user_id}, et,
  jsonb_build_object('sessionId', 'sess_' || lpad(uidx::text, 6, '0') || '_' || days_ago,
    'platform', (ARRAY['web', 'ios', 'android'])[1 + width_bucket({u[platform]}, ARRAY[0.6, 0.85]::float8[])])
  || CASE et
    WHEN 'CARD_REVIEWED' THEN jsonb_build_object('cardId', 'card_' || floor({u[card]} * 50000)::int,
      'rating', 1 + width_bucket({u[rating]}, ARRAY[0.1, 0.35, 0.85]::float8[]), 'responseTimeMs', 800 + floor({u[rt]} * {u[rt2]} * 20000)::int)
    WHEN 'SEARCH_PERFORMED' THEN jsonb_build_object('query', (ARRAY['cardiac cycle', 'renal physiology', 'brachial plexus',
      'krebs cycle', 'beta blockers', 'acid-base', 'cranial nerves', 'sepsis'])[1 + floor({u[q]} * 8)::int], 'resultCount', floor({u[rc]} * 40)::int)
    WHEN 'LECTURE_UPLOADED' THEN jsonb_build_object('lectureId', 'lec_' || floor({u[lec]} * 5000)::int, 'pageCount', 5 + floor({u[pages]} * 80)::int)
    WHEN 'VALIDATION_COMPLETED' THEN jsonb_build_object('objectiveId', 'lo_' || lpad(floor({u[lo]} * 9000)::int::text, 5, '0'),
      'comprehension', round({u[comp]}::numeric, 2))
    WHEN 'SESSION_ENDED' THEN jsonb_build_object('durationMinutes', 5 + floor({u[dur]} * {u[dur2]} * 115)::int)
    WHEN 'MISSION_COMPLETED' THEN jsonb_build_object('missionId', 'mission_' || floor({u[mission]} * 20000)::int,
      'objectivesCompleted', 1 + floor({u[objs]} * 5)::int)
    WHEN 'MISSION_STARTED' THEN jsonb_build_object('missionId', 'mission_' || floor({u[mission]} * 20000)::int)
    ELSE jsonb_build_object() END,
  ts, score,
  CASE WHEN {u[eng_null]} >= 0.25 THEN (ARRAY['LOW', 'MEDIUM', 'HIGH'])[1 + width_bucket({u[eng]}, ARRAY[0.25, 0.7]::float8[])] END,
  CASE WHEN score IS NOT NULL THEN CASE WHEN score < 45 THEN 'RUSHED' WHEN score < 80 THEN 'NORMAL' ELSE 'THOROUGH' END END,
  extract(hour FROM ts)::int, extract(dow FROM ts)::int,
  CASE et WHEN 'CARD_REVIEWED' THEN 'flashcard' WHEN 'LECTURE_UPLOADED' THEN 'lecture' WHEN 'VALIDATION_COMPLETED' THEN 'validation'
    ELSE CASE WHEN {u[ct_null]} < 0.8 THEN (ARRAY['lecture', 'flashcard', 'validation', 'clinical_reasoning'])[1 + floor({u[ct]} * 4)::int] END END,
  CASE WHEN {u[diff_null]} < 0.8 THEN (ARRAY['EASY', 'MEDIUM', 'HARD'])[1 + width_bucket({u[diff]}, ARRAY[0.3, 0.8]::float8[])] END
FROM (
  SELECT *, TIMESTAMP '{ref}' - make_interval(days => days_ago) + make_interval(hours => hour)
      + floor({u[ms]} * 3600000) * interval '1 millisecond' AS ts,
    CASE WHEN et IN ('CARD_REVIEWED', 'VALIDATION_COMPLETED', 'MISSION_COMPLETED', 'SESSION_ENDED') AND {u[score_null]} < 0.85
      THEN round(100 * least(1, greatest(0, 0.3 + 0.45 * {uu[ability]} + 0.3 * ({u[s1]} + {u[s2]} - 1))))::int END AS score
  FROM (
    SELECT i, {id} AS id, {uidx} AS uidx, 1 + floor(90 * power({u[day]}, 1.25))::int AS days_ago,
      CASE WHEN i <= 8 THEN (enum_range(NULL::"EventType"))[i]
        ELSE ({event_types})[1 + width_bucket({u[type]}, {event_cuts})] END AS et
    FROM generate_series(1::bigint, {n}) AS i) r
  CROSS JOIN LATERAL (SELECT CASE WHEN {u[own_hour]} < 0.35  -- the user's own favourite hour, +-1
      THEN ((ARRAY[7, 9, 13, 17, 19, 20, 21, 22])[1 + floor({uu[chrono]} * 8)::int] + floor({u[jitter]} * 3)::int + 23) % 24
    ELSE width_bucket({u[hour]}, {hour_cuts}) END AS hour) h) g
"""
TEMPLATES["behavioral_patterns"] = """
INSERT INTO "behavioral_patterns" ("id", "userId", "patternType", "patternName", "patternData", "confidence",
  "evidence", "occurrenceCount", "detectedAt", "lastSeenAt")
SELECT id, {user_id}, (ARRAY['OPTIMAL_STUDY_TIME', 'SESSION_DURATION_PREFERENCE', 'CONTENT_TYPE_PREFERENCE',
    'PERFORMANCE_PEAK', 'ATTENTION_CYCLE', 'FORGETTING_CURVE'])[k],
  (ARRAY['Evening learner', 'Prefers 45-minute sessions', 'Visual content preference', 'Peak after warm-up',
    'Attention drops after 30 minutes', 'Fast decay on pharmacology'])[k],
  jsonb_build_object('windowDays', 7 * (1 + floor({u[win]} * 8)::int), 'peakHour', 7 + floor({uu[chrono]} * 16)::int,
    'effectSize', round({u[effect]}::numeric, 3), 'sampleSize', 10 + floor({u[sample]} * 300)::int),
  power({u[conf]}, 0.6), ARRAY['sessions:' || (3 + floor({u[ev]} * 40)::int), 'window:' || days_ago || 'd'],
  1 + floor(40 * power({u[occ]}, 2))::int, detected, detected + (TIMESTAMP '{ref}' - detected) * {u[seen]}
FROM (
  SELECT i, {id} AS id, {uidx} AS uidx, 1 + floor({u[type]} * 6)::int AS k, 10 + floor({u[det]} * 80)::int AS days_ago,
    TIMESTAMP '{ref}' - make_interval(days => 10 + floor({u[det]} * 80)::int, mins => floor({u[min]} * 1440)::int) AS detected
  FROM generate_series(1::bigint, {n}) AS i) g
"""
TEMPLATES["struggle_predictions"] = """
INSERT INTO "struggle_predictions" ("id", "userId", "learningObjectiveId", "topicId", "predictionDate",
  "predictedStruggleProbability", "predictionConfidence", "predictionStatus", "actualOutcome", "outcomeRecordedAt",
  "featureVector")
SELECT id, {user_id}, CASE WHEN {u[lo_null]} < 0.8 THEN 'lo_' || lpad(floor({u[lo]} * 9000)::int::text, 5, '0') END,
  CASE WHEN (i * {null_topic_ids}) / {n} = ((i - 1) * {null_topic_ids}) / {n}  -- exactly K evenly spread NULLs
    THEN 'topic_' || lpad((1 + floor(power({u[topic]}, 1.5) * {topics}))::int::text, 4, '0') END,
  predicted, least(1, greatest(0, 0.15 + 0.55 * (1 - {uu[ability]}) + 0.3 * ({u[p]} - 0.5))),
  0.5 + 0.45 * {u[conf]}, status,
  CASE status WHEN 'PENDING' THEN NULL WHEN 'FALSE_POSITIVE' THEN false ELSE true END,
  CASE WHEN status <> 'PENDING' THEN least(TIMESTAMP '{ref}', predicted + make_interval(days => 1 + floor({u[out]} * 14)::int)) END,
  jsonb_build_object('retentionScore', round({u[f1]}::numeric, 3), 'reviewLapseRate', round({u[f2]}::numeric, 3),
    'sessionConsistency', round({u[f3]}::numeric, 3), 'prerequisiteGap', round({u[f4]}::numeric, 3),
    'complexityMismatch', round({u[f5]}::numeric, 3))
FROM (
  SELECT i, {id} AS id, {uidx} AS uidx,
    TIMESTAMP '{ref}' - make_interval(days => floor({u[date]} * 60)::int, mins => floor({u[min]} * 1440)::int) AS predicted,
    (ARRAY['PENDING', 'CONFIRMED', 'FALSE_POSITIVE', 'MISSED'])[1 + width_bucket({u[status]}, ARRAY[0.35, 0.65, 0.85]::float8[])] AS status
  FROM generate_series(1::bigint, {n}) AS i) g
"""
TEMPLATES["recommendations"] = """
INSERT INTO "recommendations" ("id", "userId", "recommendationType", "title", "description", "actionableText",
  "confidence", "estimatedImpact", "easeOfImplementation", "priorityScore", "status", "sourcePatternIds",
  "createdAt", "viewedAt", "dismissedAt")
SELECT id, {user_id}, (ARRAY['STUDY_TIME_OPTIMIZATION', 'SESSION_LENGTH_ADJUSTMENT', 'CONTENT_TYPE_BALANCE',
    'RETENTION_STRATEGY', 'CONSISTENCY_BUILDING'])[k],
  (ARRAY['Study in your peak hours', 'Shorten your sessions', 'Mix in more clinical cases',
    'Review before you forget', 'Keep a daily streak'])[k],
  (ARRAY['Your performance is highest in the evening.', 'Your accuracy drops after 40 minutes.',
    'You retain more from visual material.', 'Pharmacology cards decay within 3 days.',
    'Irregular study days lower your retention.'])[k],
  (ARRAY['Schedule reviews between 19:00 and 21:00.', 'Use 35-minute sessions with a 5-minute break.',
    'Add two clinical cases per session.', 'Review pharmacology every 2 days.', 'Study at least 20 minutes every day.'])[k],
  conf, impact, ease, 0.3 * conf + 0.4 * impact + 0.3 * ease, status,
  CASE WHEN {u[src_n]} < 0.5 THEN ARRAY[{pattern_1}] ELSE ARRAY[{pattern_1}, {pattern_2}] END,
  created, CASE WHEN status <> 'PENDING' THEN created + make_interval(hours => 1 + floor({u[view]} * 72)::int) END,
  CASE WHEN status = 'DISMISSED' THEN created + make_interval(hours => 73 + floor({u[dis]} * 72)::int) END
FROM (
  SELECT i, {id} AS id, {uidx} AS uidx, 1 + floor({u[type]} * 5)::int AS k, 0.4 + 0.6 * {u[conf]} AS conf,
    {u[impact]} AS impact, {u[ease]} AS ease, (1 + floor({u[p1]} * {patterns}))::bigint AS p1,
    (1 + floor({u[p2]} * {patterns}))::bigint AS p2,
    (ARRAY['PENDING', 'VIEWED', 'APPLIED', 'DISMISSED'])[1 + width_bucket({u[status]}, ARRAY[0.35, 0.65, 0.85]::float8[])] AS status,
    TIMESTAMP '{ref}' - make_interval(days => 7 + floor({u[date]} * 80)::int, mins => floor({u[min]} * 1440)::int) AS created
  FROM generate_series(1::bigint, {n}) AS i) g
"""
TEMPLATES["personalization_configs"] = """
INSERT INTO "personalization_configs" ("id", "userId", "context", "strategyVariant", "parameters", "isActive",
  "totalApplications", "successfulApplications", "avgReward", "activatedAt", "deactivatedAt", "createdAt", "updatedAt")
SELECT id, {user_id}, (ARRAY['SESSION', 'CONTENT', 'ASSESSMENT', 'MISSION'])[1 + floor({u[ctx]} * 4)::int],
  (ARRAY['pattern_heavy', 'prediction_heavy', 'balanced', 'conservative'])[1 + floor({u[strategy]} * 4)::int],
  jsonb_build_object('sessionMinutes', 20 + 5 * floor({u[len]} * 9)::int, 'difficultyBias', round(({u[bias]} - 0.5)::numeric, 2),
    'explorationRate', round((0.05 + 0.25 * {u[eps]})::numeric, 2)),
  active, total, floor(total * (0.3 + 0.6 * {u[succ]}))::int,
  CASE WHEN total = 0 THEN 0 ELSE 0.15 + 0.75 * {u[reward]} * {uu[ability]} + 0.1 * {u[noise]} END,
  activated, CASE WHEN NOT active THEN activated + (TIMESTAMP '{ref}' - activated) * {u[deact]} END, activated,
  activated + (TIMESTAMP '{ref}' - activated) * CASE WHEN active THEN {u[upd]} ELSE {u[deact]} END
FROM (
  SELECT i, {id} AS id, {uidx} AS uidx, {u[active]} < 0.7 AS active, floor(200 * power({u[total]}, 2))::int AS total,
    TIMESTAMP '{ref}' - make_interval(days => 1 + floor({u[date]} * 90)::int, mins => floor({u[min]} * 1440)::int) AS activated
  FROM generate_series(1::bigint, {n}) AS i) g
"""
TEMPLATES["study_schedule_recommendations"] = """
INSERT INTO "study_schedule_recommendations" ("id", "userId", "recommendedStartTime", "recommendedDuration",
  "confidence", "reasoningFactors", "calendarIntegration", "createdAt")
SELECT id, {user_id}, start_at, 20 + 5 * floor({u[dur]} * 15)::int, 0.5 + 0.5 * {u[conf]},
  jsonb_build_object('optimalTimeScore', round({u[f1]}::numeric, 3), 'historicalPerformance', round({u[f2]}::numeric, 3),
    'calendarAvailable', {u[f3]} < 0.8, 'userEnergyLevel', (ARRAY['low', 'medium', 'high'])[1 + floor({u[f4]} * 3)::int]),
  {u[cal]} < 0.3, least(start_at - make_interval(hours => 1 + floor({u[lead]} * 48)::int),
    TIMESTAMP '{ref}' - make_interval(mins => 1 + floor({u[lead]} * 600)::int))
FROM (
  SELECT i, {id} AS id, {uidx} AS uidx FROM generate_series(1::bigint, {n}) AS i) g
CROSS JOIN LATERAL (SELECT TIMESTAMP '{ref}' + make_interval(days => floor({u[day]} * 28)::int - 14,
  hours => (ARRAY[7, 9, 13, 17, 19, 20, 21, 22])[1 + floor({uu[chrono]} * 8)::int], mins => 15 * floor({u[q]} * 4)::int) AS start_at) s
"""


def render(table: str, sizes: Sizes, seed: int, orphans: int = 0, null_topic_ids: int = 0) -> str:
    """The INSERT statement for ``table`` (pure function of its arguments)."""
    u = _Streams(seed, table, "i")
    n = {"personalization_experiments": sizes.experiments, "experiment_assignments": sizes.assignments,
         "behavioral_events": sizes.events, "behavioral_patterns": sizes.patterns,
         "struggle_predictions": sizes.predictions, "recommendations": sizes.recommendations,
         "personalization_configs": sizes.configs, "study_schedule_recommendations": sizes.schedules}[table]
    fields = {
        "n": n, "ref": REFERENCE_DATE, "u": u, "uu": _Streams(seed, "users", "uidx"),
        "id": _id(seed, table), "uidx": _user(u, sizes.users), "user_id": USER_ID,
        "users": sizes.users, "topics": sizes.topics, "experiments": sizes.experiments,
        "patterns": sizes.patterns, "per_user": sizes.per_user,
        "assigned_users": math.ceil(sizes.assignments / sizes.per_user),
        "experiment_id": _id(seed, "personalization_experiments", "g.j"),
        "pattern_1": _id(seed, "behavioral_patterns", "p1"), "pattern_2": _id(seed, "behavioral_patterns", "p2"),
        "orphans": orphans, "null_topic_ids": null_topic_ids,
        "event_types": "ARRAY[" + ", ".join(f"'{t}'" for t in EVENT_WEIGHTS) + ']::"EventType"[]',
        "event_cuts": _cuts(list(EVENT_WEIGHTS.values())), "hour_cuts": _cuts(HOUR_WEIGHTS),
    }
    # Inserting in id order keeps the primary-key B-tree appends sequential (~20% faster).
    return TEMPLATES[table].format_map(fields) + "ORDER BY 1\n"


# --- database work -----------------------------------------------------------

def require_baseline(conn: psycopg.Connection, url: str) -> None:
    """Raise GenerateError (exit 2) unless all baseline tables and the enum exist."""
    missing = [t for t in TABLES
               if conn.execute("SELECT to_regclass(%s)", (f'"{t}"',)).fetchone()[0] is None]
    if conn.execute("""SELECT to_regtype('"EventType"')""").fetchone()[0] is None:
        missing.append('type "EventType"')
    if missing:
        raise GenerateError(
            f"database {mask_url(url)} is not at the baseline (missing: {', '.join(missing)}); "
            "apply the baseline migration first", 2)


def generate(url: str, *, seed: int = 42, scale: str | float | int = "small", orphans: int = 0,
             null_topic_ids: int = 0, truncate: bool = False,
             progress: Callable[[str, int, float], None] | None = None) -> dict[str, int]:
    """Fill the baseline tables at ``url``; return rows inserted per table.

    ``scale`` is a preset name or a multiplier of the small preset.
    Everything (optional TRUNCATE, the inserts, ANALYZE) runs in one
    transaction, so a failure leaves the database as it was. ``progress``,
    if given, is called with (table, rows, seconds) after each insert.
    """
    sizes = sizes_for(resolve_scale(scale))
    if not 0 <= orphans <= MAX_ANOMALIES or not 0 <= null_topic_ids <= sizes.predictions:
        raise GenerateError(f"need 0 <= orphans <= {MAX_ANOMALIES} and "
                            f"0 <= null_topic_ids <= {sizes.predictions} (struggle_predictions rows)", 2)
    counts: dict[str, int] = {}
    try:
        with psycopg.connect(url) as conn:
            require_baseline(conn, url)
            with conn.transaction():
                if truncate:
                    conn.execute(f"TRUNCATE {TABLE_LIST}")
                for table in TABLES:
                    started = time.monotonic()
                    counts[table] = conn.execute(render(table, sizes, seed, orphans, null_topic_ids)).rowcount
                    if progress:
                        progress(table, counts[table], time.monotonic() - started)
                conn.execute(f"ANALYZE {TABLE_LIST}")
    except psycopg.errors.UniqueViolation as exc:
        raise GenerateError(f"rows for seed {seed} already exist ({exc.diag.message_primary}); "
                            "pass --truncate or use another seed", 2) from exc
    return counts


def content_checksum(url: str) -> dict[str, str]:
    """Per table, an md5 over every row's text ordered by id (md5 of per-row md5s)."""
    with psycopg.connect(url) as conn:
        return {t: conn.execute(
            f"""SELECT md5(coalesce(string_agg(md5(t::text), '' ORDER BY t."id"), '')) FROM "{t}" t"""
        ).fetchone()[0] for t in TABLES}


# --- CLI ---------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="postgresql:// URL of a database at the baseline")
    parser.add_argument("--seed", type=int, default=42)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="multiplier of the small preset")
    size.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--orphans", type=int, default=0, help="assignments pointing at missing experiments")
    parser.add_argument("--null-topic-ids", type=int, default=0, help="struggle_predictions with NULL topicId")
    parser.add_argument("--truncate", action="store_true", help="empty the baseline tables first")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = _parse_args(argv)
    scale: str | float = args.scale if args.scale is not None else args.preset
    print(f"generate_data: {mask_url(args.db)} seed={args.seed} scale={scale}", file=sys.stderr)

    def report(table: str, rows: int, seconds: float) -> None:
        print(f"  {table:<32} {rows:>10,} rows {seconds:8.2f} s", file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        counts = generate(args.db, seed=args.seed, scale=scale, orphans=args.orphans,
                          null_topic_ids=args.null_topic_ids, truncate=args.truncate, progress=report)
    except GenerateError as exc:
        print(f"generate_data: {_scrub(str(exc), args.db)}", file=sys.stderr)
        return exc.code
    except psycopg.Error as exc:
        print(f"generate_data: database error on {mask_url(args.db)}: {_scrub(str(exc), args.db)}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"  {'total (incl. ANALYZE)':<32} {sum(counts.values()):>10,} rows {elapsed:8.2f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
