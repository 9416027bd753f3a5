"""Data for REDI: OpenR1-Math-Raw curation, chat formatting, and batching for SFT and pairs.

(Module docstring to be completed: CLI usage, curation rules, formats, batching.)
"""
from __future__ import annotations

import json
import os
import sys

# -----------------------------------------------------------------------------
# curation (OpenR1-Math-Raw -> SFT examples and preference pairs)
# [region owned by the curation work: readers, rules, summary, decontamination, CLI subcommands]

# === END OF CURATION REGION ===

# -----------------------------------------------------------------------------
# formatting: chat template -> input_ids / labels
# [region owned by the training work]

# === END OF FORMATTING/BATCHING REGION ===
