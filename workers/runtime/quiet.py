"""Library warnings a user of jobhive cannot act on, dropped (and nothing else).

- transformers 5 on a CPU-only torch: "`CLIPImageProcessor` requires torchvision (not
  installed); falling back to ..." at import (diffusers' SD3 pipeline and sentence-transformers
  import such classes). torchvision has no CPU build here, and the fallback is what jobhive
  wants anyway.
- bitsandbytes on a machine without CUDA: "Failed to load CPU gemm_4bit_forward from
  kernels-community" at import. The `kernels` package it asks for downloads its kernels from
  the Hugging Face Hub, and 4-bit loading works without them.
"""

from __future__ import annotations

import logging

_DROPPED = {
    "transformers.utils.import_utils": "requires torchvision (not installed)",
    "bitsandbytes.backends.cpu.ops": "from kernels-community",
}


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def drop_unactionable_warnings() -> None:
    """Installs the filters: call before the model libraries are imported."""
    for logger, text in _DROPPED.items():
        logging.getLogger(logger).addFilter(_Drop(text))
