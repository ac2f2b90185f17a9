"""The paper's published numbers (Guo, Rush & Kim), shown beside ours in the tables.

All from BERT-large. Table 1 is the GLUE *test* server (average without QNLI); Tables 2
and 4 are dev-set numbers. Only values the paper states are here; a cell the paper does
not report stays absent rather than being guessed.
"""
from __future__ import annotations

PAPER_MODEL = "BERT-large"
TABLE1_SOURCE = f"paper ({PAPER_MODEL}, GLUE test)"
TABLE2_SOURCE = f"paper ({PAPER_MODEL}, GLUE dev)"
TABLE4_SOURCE = f"paper ({PAPER_MODEL}, SQuAD v1.1 dev)"

# Table 1: (label, new params per task in % of pretrained, per-column scores, average).
TABLE1_ROWS = (
    ("full finetuning (Devlin et al.)", 100.0, {}, 80.9),
    ("full finetuning (this work)", 100.0, {}, 80.6),
    ("adapters (Houlsby et al.)", 3.6, {}, 80.4),
    ("adapters (Houlsby et al.)", 2.1, {}, 79.8),
    ("last layer", 3.8, {}, 68.2),
    ("non-adaptive diff pruning", 0.5, {}, 75.5),
    ("diff pruning", 0.5, {}, 79.4),
    ("structured diff pruning", 0.5,
     {"qnli": 93.3, "sst2": 94.1, "mnli_m": 86.4, "mnli_mm": 86.0, "cola": 61.1,
      "mrpc": 89.7, "stsb": 86.0, "rte": 70.6, "qqp": 71.1}, 80.6),
)

# Table 2: structured diff pruning, average over all nine GLUE dev columns, by target rate (%).
TABLE2_STRUCTURED_AVERAGE = {0.1: 82.5, 0.25: 84.5, 0.5: 84.8, 1.0: 85.1}
TABLE2_FULL_FINETUNING_AVERAGE = 85.0

# Table 4: SQuAD v1.1 dev F1: (label, new params per task in %, F1).
TABLE4_ROWS = (
    ("full finetuning", 100.0, 90.8),
    ("diff pruning", 1.0, 92.1),
    ("structured diff pruning", 1.0, 93.2),
    ("adapters", 2.0, 90.4),
)

# Groups (one per weight matrix / bias vector) in BERT-large, Figure 1 right.
BERT_LARGE_GROUPS = 393
