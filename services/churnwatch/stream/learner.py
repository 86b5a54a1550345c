"""
The learner: one process that learns the model from churn.training and checkpoints it per
epoch in Redis, in the order of `core.learning.Curriculum` (the same as `Replay`'s).

churn.training carries the scorers' examples and, per partition, watermark records sent after
the partition was swept (and its examples sent) up to that watermark. When every partition's
watermark has passed the boundary of epoch k, the examples resolved before it are learned
(predict before learn: progressive validation, exported as metrics) and checkpoint k is saved.

The first time every partition has reported, the learner saves the model it has (untrained,
or the restored checkpoint) as the checkpoint of the epoch the low watermark is in: the
scorers then know the epochs before are settled and stop waiting for them.

A restarted learner reads churn.training from the beginning (under a fresh consumer group),
restores the newest checkpoint K and learns only what comes after it; when it has to catch
up several epochs at once it still saves every one of them, each with the examples resolved
before its boundary, so the checkpoints do not depend on when the learner ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from churnwatch.core.labels import Example
from churnwatch.core.learning import Curriculum, boundary, epoch_of
from churnwatch.core.model import ProgressiveValidation, Scorer
from churnwatch.metrics import Metrics
from churnwatch.store import RedisStore
from churnwatch.stream.health import StoreHealth
from churnwatch.stream.records import (
    Record,
    Sink,
    TrainingRecordError,
    Watermark,
    dead_letter,
    parse_training,
)
from churnwatch.stream.settings import LearnerSettings

log = logging.getLogger(__name__)


class Learner:
    """Curriculum, model and checkpoints; `handle` takes batches of churn.training records."""

    def __init__(
        self,
        settings: LearnerSettings,
        *,
        store: RedisStore,
        metrics: Metrics,
        topic: str,
        sink: Sink,
        deadletter_topic: str,
        health: StoreHealth | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.topic = topic
        self.sink = sink
        self.deadletter_topic = deadletter_topic
        self.health = health or StoreHealth(metrics, max_backoff=settings.store_retry_max_seconds)
        # the policy's config: the engine's, with the rules file's `model` section
        config = settings.to_policy().config
        self.length = config.model_epoch
        self.scorer = Scorer(config.model)
        self.curriculum = Curriculum(self.length, settings.partitions_count)
        self.quality = ProgressiveValidation(settings.quality_window)
        self.written: int | None = None
        """The newest checkpoint saved (or restored)."""
        metrics.prime_topic(topic)

    async def restore(self) -> None:
        """Continue from the newest checkpoint in Redis, if there is one."""
        found = await self.health.retry("restore", self.store.latest_checkpoint)
        if found is None:
            log.info("learner.fresh", extra={"topic": self.topic})
            return
        epoch, data = found
        self.scorer = Scorer.from_bytes(data)
        self.written = epoch
        self._export()
        log.info(
            "learner.restored",
            extra={"epoch": epoch, "version": self.scorer.version, "topic": self.topic},
        )

    async def handle(self, records: Sequence[Record]) -> None:
        """Apply a batch of churn.training records in order."""
        for record in records:
            self.metrics.records_consumed.labels(self.topic).inc()
            try:
                item = parse_training(record.value)
            except TrainingRecordError as exc:
                log.warning(
                    "training.malformed",
                    extra={
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "detail": str(exc),
                    },
                )
                await self._dead_letter(record, "malformed", str(exc))
                continue
            if isinstance(item, Watermark):
                if not 0 <= item.partition < self.curriculum.partitions:
                    log.warning(
                        "training.bad_partition",
                        extra={
                            "topic": record.topic,
                            "partition": record.partition,
                            "offset": record.offset,
                            "watermark_partition": item.partition,
                            "partitions": self.curriculum.partitions,
                        },
                    )
                    msg = (
                        f"watermark of partition {item.partition}: expected a partition in "
                        f"[0, {self.curriculum.partitions})"
                    )
                    await self._dead_letter(record, "bad_partition", msg)
                    continue
                self.metrics.records_processed.labels(self.topic).inc()
                await self._advance(item)
            elif self.curriculum.add(item):
                self.metrics.records_processed.labels(self.topic).inc()
            else:
                self.metrics.records_duplicates.labels(self.topic).inc()

    async def _dead_letter(self, record: Record, reason: str, message: str) -> None:
        """
        A training record the learner cannot use goes to the dead-letter topic with its bytes;
        the delivery is awaited before the next record (a restarted learner, which reads the
        topic from the beginning, sends it again with the same source topic, partition and
        offset, by which a reader can recognise it).
        """
        value = dead_letter(
            reason=reason,
            message=message,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            original=record.value,
            stage="learner",
            max_original_bytes=self.settings.deadletter_max_original_bytes,
        )
        delivery = await self.sink.send(
            self.deadletter_topic,
            record.key,
            value,
            partition=None,
            headers=(("reason", reason.encode()),),
        )
        await delivery
        self.metrics.records_dead_lettered.labels(self.topic, reason).inc()

    async def _advance(self, mark: Watermark) -> None:
        log.debug(
            "learner.watermark",
            extra={"partition": mark.partition, "watermark": mark.watermark.isoformat()},
        )
        released = self.curriculum.advance(mark.partition, mark.watermark)
        if self.written is None and not released:
            low = self.curriculum.low_watermark()
            if low is not None:
                await self._save(epoch_of(low, self.length))
        for epoch, examples in released:
            await self._release(epoch, examples)

    async def _release(self, epoch: int, examples: list[Example]) -> None:
        written = self.written
        if written is not None and epoch <= written:
            return  # already in a restored checkpoint
        if written is None:
            first = epoch
        else:
            first = written + 1
            floor = boundary(written, self.length)
            examples = [e for e in examples if e.resolved_at >= floor]
        started = time.perf_counter()
        i = 0
        for k in range(first, epoch + 1):
            bound = boundary(k, self.length)
            while i < len(examples) and examples[i].resolved_at < bound:
                self._learn(examples[i])
                i += 1
            await self._save(k)
        log.info(
            "learner.epoch",
            extra={
                "epoch": epoch,
                "examples": len(examples),
                "labels": self.scorer.n_labels,
                "version": self.scorer.version,
                "auc": self.quality.auc,
                "log_loss": self.quality.log_loss,
                "late": self.curriculum.late,
                "seconds": round(time.perf_counter() - started, 4),
            },
        )

    def _learn(self, example: Example) -> None:
        x = example.x
        self.quality.update(example.churned, self.scorer.predict_one(x))
        self.scorer.learn_one(x, example.churned)

    async def _save(self, epoch: int) -> None:
        data = self.scorer.to_bytes()
        # Retried in place while Redis is away: the epochs after it wait, none is skipped.
        await self.health.retry("save_checkpoint", lambda: self.store.save_checkpoint(epoch, data))
        self.written = epoch
        self._export()

    def _export(self) -> None:
        self.metrics.set_model_version(self.scorer.version)
        self.metrics.model_labels.set(self.scorer.n_labels)
        if self.quality.auc is not None:
            self.metrics.model_auc.set(self.quality.auc)
        if self.quality.log_loss is not None:
            self.metrics.model_log_loss.set(self.quality.log_loss)
