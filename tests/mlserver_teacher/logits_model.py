"""A stock-MLServer teacher for tests/test_mlserver.py: a linear model answering ``logits`` [B, C] (FP32).

It reads its weights (``w`` [D, C], ``b`` [C]) from the ``.npz`` named by ``parameters.uri`` in its
``model-settings.json``, flattens the ``input`` tensor and ignores every other input (our ``ids``).
Runs inside MLServer's own venv (``make venv-mlserver``), not the project's.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class LogitsModel(MLModel):
    """``logits = flatten(input) @ w + b``."""

    async def load(self) -> bool:
        weights = np.load(await get_model_uri(self._settings))
        self._w, self._b = weights["w"].astype(np.float32), weights["b"].astype(np.float32)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = next(NumpyCodec.decode_input(t) for t in payload.inputs if t.name == "input")
        logits = x.reshape(len(x), -1).astype(np.float32) @ self._w + self._b
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("logits", logits.astype(np.float32))])
