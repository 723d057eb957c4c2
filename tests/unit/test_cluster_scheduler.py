"""The cluster scheduler's choices (pure Python): warm-model affinity, fairness between users, interactive
jobs first, no starvation, no retry on the worker a job killed, and the queue limit."""

from __future__ import annotations

import pytest

from webui.services.cluster_scheduler import QueuedJob, QueueFull, Scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _scheduler(workers: dict[str, list[str]], **kwargs: object) -> tuple[Scheduler, Clock]:
    clock = Clock()
    scheduler = Scheduler(clock=clock, **kwargs)  # type: ignore[arg-type]
    for worker_id, models in workers.items():
        scheduler.add_worker(worker_id)
        scheduler.workers[worker_id].models = list(models)
    return scheduler, clock


def _job(job_id: str, checkpoint: str, user: str = "a", **kwargs: object) -> QueuedJob:
    return QueuedJob(job_id=job_id, user=user, checkpoint=checkpoint, **kwargs)  # type: ignore[arg-type]


def _pairs(scheduler: Scheduler) -> dict[str, str]:
    return {job.job_id: worker.worker_id for job, worker in scheduler.assign()}


def test_a_job_goes_to_the_worker_that_has_its_model() -> None:
    scheduler, _ = _scheduler({"w1": ["sdxl.safetensors [abc]"], "w2": ["sd15.safetensors [def]"]})
    scheduler.submit(_job("1", "sd15.safetensors"))
    scheduler.submit(_job("2", "sdxl.safetensors [abc]"))
    assert _pairs(scheduler) == {"1": "w2", "2": "w1"}
    assert (scheduler.warm_hits, scheduler.assigned) == (2, 2)


def test_a_cold_job_goes_to_the_worker_with_the_least_loaded() -> None:
    scheduler, _ = _scheduler({"w1": ["a", "b"], "w2": ["c"]})
    scheduler.submit(_job("1", "d"))
    assert _pairs(scheduler) == {"1": "w2"}


def test_fairness_between_users_and_interactive_first() -> None:
    scheduler, clock = _scheduler({"w1": []})
    for index in range(5):
        scheduler.submit(_job(f"bulk{index}", "m", user="api-key-1"))
        clock.now += 0.1
    scheduler.submit(_job("one", "m", user="artist"))
    scheduler.submit(_job("batch", "m", user="api-key-2"))
    scheduler.submit(_job("ui", "m", user="api-key-2", interactive=True))
    assert scheduler.users() == [
        {"user": "api-key-1", "queued": 5, "started": 0},
        {"user": "api-key-2", "queued": 2, "started": 0},
        {"user": "artist", "queued": 1, "started": 0},
    ]  # the cluster page's view of the fair shares
    order = []
    for step in range(8):
        if step == 3:
            assert {row["user"]: row["started"] for row in scheduler.users()} == {
                "api-key-1": 1, "api-key-2": 1, "artist": 1,
            }  # fmt: skip
        ((job, worker),) = scheduler.assign()
        order.append(job.job_id)
        scheduler.finished(worker.worker_id)
    assert order[0] == "ui"  # interactive first
    # then the user with the fewest jobs started, oldest first among equals: api-key-2 had "ui" already
    assert order[1:] == ["bulk0", "one", "bulk1", "batch", "bulk2", "bulk3", "bulk4"]


def test_a_job_waiting_too_long_is_taken_regardless_of_priority_and_fairness() -> None:
    scheduler, clock = _scheduler({"w1": ["m"]}, starve_after=30.0)
    scheduler.submit(_job("old", "other", user="busy"))
    scheduler.started["busy"] = 50  # this user has had many jobs
    clock.now += 31
    scheduler.submit(_job("new", "m", user="fresh", interactive=True))
    ((job, _worker),) = scheduler.assign()
    assert job.job_id == "old"


def test_a_job_is_not_given_again_to_the_worker_that_died_running_it() -> None:
    scheduler, _ = _scheduler({"w1": ["m"], "w2": []})
    job = _job("1", "m")
    scheduler.submit(job)
    assert _pairs(scheduler) == {"1": "w1"}
    scheduler.worker_lost("w1")
    job.excluded.add("w1")
    scheduler.requeue(job)
    assert _pairs(scheduler) == {"1": "w2"}
    scheduler.worker_back("w1")
    assert scheduler.workers["w1"].alive and scheduler.workers["w1"].models == []


def test_the_queue_limit_says_when_to_retry() -> None:
    scheduler, _ = _scheduler({"w1": [], "w2": []}, max_queue=4, seconds_per_job=3.0)
    for index in range(4):
        scheduler.submit(_job(str(index), "m"))
    with pytest.raises(QueueFull) as refused:
        scheduler.submit(_job("5", "m"))
    assert refused.value.retry_after == 6  # 4 jobs × 3 s over 2 workers
    assert "queue is full" in str(refused.value)


def test_a_worker_that_frees_up_takes_a_job_for_its_model_before_an_older_one() -> None:
    """One worker free at a time (the usual case under load): it takes the queued job for the model it has
    loaded, and leaves the older job to the worker that has that one."""
    scheduler, clock = _scheduler({"w1": ["m1"], "w2": ["m2"]})
    for worker in scheduler.workers.values():
        worker.busy = True
    scheduler.submit(_job("old", "m2"))
    clock.now += 1
    scheduler.submit(_job("new", "m1"))
    scheduler.finished("w1", ["m1"])
    assert _pairs(scheduler) == {"new": "w1"}
    scheduler.finished("w2", ["m2"])
    assert _pairs(scheduler) == {"old": "w2"}
    assert scheduler.warm_hits == 2


def test_a_free_worker_does_not_idle_while_a_job_waits_for_a_busy_warm_worker() -> None:
    scheduler, _ = _scheduler({"w1": ["m1"], "w2": []})
    scheduler.workers["w1"].busy = True
    scheduler.submit(_job("1", "m1"))
    assert _pairs(scheduler) == {"1": "w2"}
