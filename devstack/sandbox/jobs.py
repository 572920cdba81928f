"""The sandbox's job store: every job of every dialect with its tasks, looked up by id, by task
id and by tag, until it is forgotten, and the API keys each dialect accepts with their scopes.
Task state itself changes in the executor, under the same lock, so a dialect rendering a job
under it sees one consistent state."""

from __future__ import annotations

import hmac
import threading
import uuid

from .models import Job, Task, TaskSpec, now


class JobStore:
    """Jobs in creation order, their tasks by id, jobs by tag, and API keys by dialect."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._jobs: dict[str, Job] = {}  # in creation order
        self._by_tag: dict[str, list[Job]] = {}
        self._tasks: dict[str, Task] = {}
        # dialect -> API key -> its scopes
        self._keys: dict[str, dict[bytes, frozenset[str]]] = {}

    def create_job(
        self, dialect: str, specs: list[TaskSpec], tag: str | None, webhook_url: str | None
    ) -> Job:
        job_id = str(uuid.uuid4())
        created = now()
        ids = {spec.name: str(uuid.uuid4()) for spec in specs}
        tasks = [
            Task(
                id=ids[spec.name],
                name=spec.name,
                job_id=job_id,
                operation=spec.operation,
                spec=spec.spec,
                payload=spec.payload,
                input_ids=[ids[name] for name in spec.inputs],
                created_at=created,
            )
            for spec in specs
        ]
        job = Job(job_id, dialect, tag, webhook_url, tasks, created)
        with self._lock:
            self._jobs[job_id] = job
            if tag is not None:
                self._by_tag.setdefault(tag, []).append(job)
            self._tasks.update({task.id: task for task in tasks})
        return job

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def task(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def jobs(self, dialect: str, *, tag: str | None = None) -> list[Job]:
        """The dialect's jobs, oldest first; with `tag`, only those whose tag equals it."""
        with self._lock:
            pool = self._by_tag.get(tag, []) if tag is not None else self._jobs.values()
            return [job for job in pool if job.dialect == dialect]

    def job_count(self) -> int:
        with self._lock:
            return len(self._jobs)

    def forget(self, job_id: str) -> bool:
        """Remove a job, as providers delete jobs some hours after they ended."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return False
            if job.tag is not None:
                self._by_tag[job.tag] = [j for j in self._by_tag[job.tag] if j is not job]
            for task in job.tasks:
                self._tasks.pop(task.id, None)
            return True

    def add_key(self, dialect: str, key: str, scopes: frozenset[str]) -> None:
        """Let `key` call the dialect's API with exactly `scopes`."""
        with self._lock:
            self._keys.setdefault(dialect, {})[key.encode()] = scopes

    def key_scopes(self, dialect: str, given: str) -> frozenset[str] | None:
        """The scopes of the dialect's key `given`; None when it is no key of the dialect."""
        with self._lock:
            keys = list(self._keys.get(dialect, {}).items())
        # compare with every key, so the time taken does not say which one nearly matched
        found = None
        for key, scopes in keys:
            if hmac.compare_digest(given.encode(), key):
                found = scopes
        return found
