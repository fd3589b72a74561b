"""Celery configuration for long, rate-limited LLM tasks.

Time limits are ordered  LLM HTTP timeout < soft limit < hard limit < broker visibility timeout,
so a slow provider call is cut by its own timeout first, a stuck task by the soft then the hard
limit, and only a dead worker's task is redelivered by the broker (after the visibility
timeout). Recovery does not wait for that: a dead worker's stage leases run out within
STAGE_LEASE_S and the recovery sweep hands its stages to another worker (masterplan/recovery.py).
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

# The limits live with the settings, which refuse an LLM_TIMEOUT_S that is not below them.
from masterplan.settings import HARD_TIME_LIMIT_S, SOFT_TIME_LIMIT_S, VISIBILITY_TIMEOUT_S, Settings
from masterplan.stages import INTERACTIVE_QUEUE, PERSONA_QUEUE, PIPELINE_QUEUE

__all__ = ["FAIL_FAST_TRANSPORT", "HARD_TIME_LIMIT_S", "INTERACTIVE_QUEUE", "PERSONA_QUEUE",
           "PIPELINE_QUEUE", "SOFT_TIME_LIMIT_S", "VISIBILITY_TIMEOUT_S",
           "celery_config"]


# For the API's publishes only: one that cannot reach the broker fails within about a second
# (kombu's default retries for its connect timeout, ~6 s, while the client waits); the job row
# is the outbox and the sweep publishes later. Not for workers: their consumers read the same
# options when reconnecting, and with these they give up on a broker that is restarting.
FAIL_FAST_TRANSPORT = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                       "interval_max": 0.2, "connect_retries_timeout": 1}


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": SOFT_TIME_LIMIT_S,
        "task_time_limit": HARD_TIME_LIMIT_S,
        "result_expires": 24 * 3600,
        "broker_connection_retry_on_startup": True,
        # Flower shows live tasks only when workers send events.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Persona calls (long, rate-limited) and the rest can get their own workers.
        # Interview turns (a founder is reading) go to `interactive`, which can have workers
        # of its own so that they never wait behind a backlog of jobs.
        "task_queues": (Queue(INTERACTIVE_QUEUE, routing_key=INTERACTIVE_QUEUE),
                        Queue(PERSONA_QUEUE, routing_key=PERSONA_QUEUE),
                        Queue(PIPELINE_QUEUE, routing_key=PIPELINE_QUEUE)),
        "task_default_queue": PIPELINE_QUEUE,
        # The database holds every result and decides what runs next: no chord, no result
        # backend on the hot path, nothing in Redis whose loss could strand a job.
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
        # A publish that cannot reach the broker fails fast; the job row is the outbox.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.1,
                                      "interval_step": 0.2, "interval_max": 0.3},
    }
    if settings.broker_url.startswith("memory://"):
        # kombu's memory transport polls once a second by default: ~1 s per hop.
        conf["broker_transport_options"] = {"polling_interval": 0.005}
    elif settings.broker_url.startswith(("amqp", "pyamqp")):
        # RabbitMQ redelivers a dead consumer's unacked messages at once (no visibility timeout).
        conf["broker_connection_timeout"] = 2
        conf["broker_transport_options"] = {"confirm_publish": True}
    else:
        conf["broker_transport_options"] = {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "global_keyprefix": f"{settings.redis_key_prefix}:",
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        }
        conf["result_backend_transport_options"] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return conf
