"""The exception family: messages name the input, and errors survive a trip to another process."""

from __future__ import annotations

import pickle

from bonescan.errors import BoneScanError, MissingDecoderError


def test_errors_pickle_with_their_source_and_reason():
    for error in (MissingDecoderError("scan.dcm", "needs pylibjpeg"), BoneScanError(None, "no studies")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.source, copy.reason, str(copy)) == (error.source, error.reason, str(error))
