"""Sending results to the PACS: C-STORE of each queued Secondary Capture and SR, with retry and backoff.

A result is marked sent only after the destination answered success (or a warning) for it. When the destination
is down, busy or answers a failure, the result's next attempt waits retry_base * 2^attempts seconds (at most
retry_max), so a PACS that is down for an hour receives everything shortly after it comes back. A destination
that refuses the same result REFUSALS_BEFORE_GIVING_UP times is taken at its word: the result is marked failed
with its answer.

Exactly once, as a PACS sees it: a result keeps its SOP Instance UID from the moment it is queued, so if the
node is killed after the destination stored a result but before the node recorded it as sent, the resend
after restart carries the same UID and the PACS treats it as the same instance (DICOM stores are idempotent by
SOP Instance UID); no second result is ever made for a study.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time

from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from ..errors import describe
from .config import Destination
from .queue import NodeQueue, OutgoingResult

log = logging.getLogger("bonescan.node")

SUCCESS_STATUSES = {0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}
REFUSALS_BEFORE_GIVING_UP = 5
RESULT_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # Explicit, then Implicit VR Little Endian


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base, 2 base, 4 base, ... capped."""
    return min(cap, base * 2 ** max(0, attempts))


class Sender(threading.Thread):
    """Background thread sending due results over one association at a time."""

    def __init__(self, queue: NodeQueue, destination: Destination, calling_ae: str, retry_base: float = 1.0,
                 retry_max: float = 60.0, poll: float = 0.2, timeout: float = 30.0,
                 tls: ssl.SSLContext | None = None):
        super().__init__(name="bonescan-send", daemon=True)
        self.queue = queue
        self.destination = destination
        self.tls_args = (tls, destination.host) if tls is not None else None
        self.retry_base, self.retry_max, self.poll = retry_base, retry_max, poll
        self.ae = AE(ae_title=calling_ae)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.connection_timeout = min(timeout, 10.0)
        for sop_class in (SecondaryCaptureImageStorage, ComprehensiveSRStorage, SegmentationStorage):
            self.ae.add_requested_context(sop_class, RESULT_SYNTAXES)
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                due = self.queue.due_results()
                if due:
                    self.send(due)
                    continue
                next_due = self.queue.next_due_time()
            except Exception as error:  # noqa: BLE001 - the sender must outlive any one failure
                log.exception("sending failed: %s", error)
                next_due = None
            wait = self.poll if next_due is None else min(self.poll * 5, max(0.01, next_due - time.time()))
            self.wake.wait(wait)
            self.wake.clear()

    def _retry(self, results: list[OutgoingResult], error: str) -> None:
        delays = [backoff(r.attempts, self.retry_base, self.retry_max) for r in results]
        self.queue.mark_retry([r.sop_uid for r in results], error, delays)
        log.warning("%d results to %s wait %.0f s or more: %s", len(results), self.destination, min(delays), error)

    def send(self, due: list[OutgoingResult]) -> None:
        """Send the due results over one association; record each outcome as it comes."""
        dest = self.destination
        assoc = self.ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=self.tls_args)
        if not assoc.is_established:
            self._retry(due, f"no association with {dest} ({'rejected' if assoc.is_rejected else 'unreachable'})")
            return
        try:
            for index, result in enumerate(due):
                if self.stopping.is_set():
                    return
                if not result.path.is_file():
                    self.queue.mark_send_failed(result.sop_uid, result.study_uid, f"{result.path} is missing")
                    continue
                try:
                    status = assoc.send_c_store(result.path)
                except Exception as error:  # noqa: BLE001 - a file pynetdicom cannot send: give up on it alone
                    self.queue.mark_send_failed(result.sop_uid, result.study_uid, describe(error))
                    continue
                code = int(status.Status) if status and "Status" in status else None
                if code in SUCCESS_STATUSES:
                    self.queue.mark_sent(result.sop_uid)
                    log.info("sent %s %s of study %s to %s", result.kind.upper(), result.sop_uid,
                             result.study_uid, dest)
                elif code is None:  # no answer: the association broke; the rest wait for the next one
                    self._retry(due[index:], f"{dest} stopped answering")
                    return
                elif result.attempts + 1 >= REFUSALS_BEFORE_GIVING_UP:
                    self.queue.mark_send_failed(result.sop_uid, result.study_uid,
                                                f"{dest} refused it {result.attempts + 1} times (status 0x{code:04X})")
                else:
                    self._retry([result], f"{dest} answered status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
