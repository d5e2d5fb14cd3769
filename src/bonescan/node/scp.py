"""The DICOM side of the node: a pynetdicom Storage SCP that answers C-ECHO and C-STORE.

Association rules: the called AE title must be the node's; when an allow-list is given, any other calling AE
title is rejected at association (A-ASSOCIATE-RJ, "calling AE title not recognised"). Presentation contexts:
Verification, NM Image Storage (and Secondary Capture when configured) in the uncompressed transfer syntaxes and
the compressed ones the reading layer decodes; other SOP classes are not accepted, so a sender learns at
negotiation that CT or SR objects are not for this node. Each C-STORE goes through `Intake.accept`, whose
verdict becomes the response status with the reason in Error Comment.
"""

from __future__ import annotations

import logging
import ssl

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification

from ..io.dicom import DECODER_PACKAGES
from .config import NodeConfig
from .intake import CANNOT_UNDERSTAND, Intake

log = logging.getLogger("bonescan.node")

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
# Explicit VR Little Endian first: it is what the node stores and forwards without conversion.
TRANSFER_SYNTAXES = [s for s in (*UNCOMPRESSED, *DECODER_PACKAGES) if s in ALL_TRANSFER_SYNTAXES]
MAX_PDU = 0  # no limit on the PDUs we receive: fewer, larger reads
NETWORK_TIMEOUT = 60.0  # seconds of silence before an association is aborted, so a stalled peer frees its thread


def server_tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """TLS for incoming associations: the node's certificate and key; caller certificates checked with tls_ca."""
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(config.tls_cert), keyfile=str(config.tls_key))
    if config.tls_ca is not None:
        context.load_verify_locations(cafile=str(config.tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """TLS for sending results: the destination's certificate checked with forward_tls_ca; the node's own
    certificate (tls_cert) presented when it has one, for destinations that require client certificates."""
    if config.forward_tls_ca is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.forward_tls_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls:
        context.load_cert_chain(certfile=str(config.tls_cert), keyfile=str(config.tls_key))
    return context


class StorageSCP:
    """The listening server; `start()` returns once it accepts associations, `address` gives the bound port."""

    def __init__(self, config: NodeConfig, intake: Intake, sop_classes: tuple[str, ...]):
        self.config = config
        self.intake = intake
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = MAX_PDU
        self.ae.network_timeout = NETWORK_TIMEOUT
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 60
        self.ae.require_called_aet = True
        if config.allow:
            self.ae.require_calling_aet = list(config.allow)
        self.ae.add_supported_context(Verification)
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.server = None

    def start(self) -> tuple[str, int]:
        """Listen (in background threads) and return the bound (host, port)."""
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_ACCEPTED, self._on_accepted)]
        self.server = self.ae.start_server((self.config.host, self.config.port), block=False,
                                           ssl_context=server_tls_context(self.config), evt_handlers=handlers)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_store(self, event) -> Dataset:
        calling = _calling_ae(event)
        try:
            raw = event.encoded_dataset(include_meta=True)
        except Exception as error:  # noqa: BLE001 - a dataset pynetdicom cannot re-encode is not understandable
            return _status(CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(error).__name__})")
        verdict = self.intake.accept(raw, calling)
        return _status(verdict.status, verdict.reason if not verdict.ok else "")

    @staticmethod
    def _on_echo(event) -> int:
        log.info("C-ECHO from %s", _calling_ae(event))
        return 0x0000

    @staticmethod
    def _on_accepted(event) -> None:
        log.info("association accepted from %s (%s)", _calling_ae(event), event.assoc.requestor.address)

    @staticmethod
    def _on_rejected(event) -> None:
        log.warning("association rejected from %s (%s)", _calling_ae(event), event.assoc.requestor.address)


def _calling_ae(event) -> str:
    title = event.assoc.requestor.ae_title
    return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip()


def _status(code: int, reason: str) -> Dataset:
    status = Dataset()
    status.Status = code
    if reason:
        status.ErrorComment = reason[:64]  # LO: at most 64 characters
    return status
