"""The field's MNIST numbers under DPImageBench's protocol (oracle accuracy, %, at ε = 1 and ε = 10).

DPImageBench's own re-runs (Gong et al., 2025, arXiv 2503.14681, its README's main table) and DP-FETA-Pro
(arXiv 2601.06368, same protocol, its own repository's logs). Published, not run here.
"""

ANCHORS = [
    ("DP-FETA-Pro", 97.3, 98.5),
    ("DP-FETA", 95.6, 98.1),
    ("PrivImage", 94.0, 97.8),
    ("PDP-Diffusion", 94.5, 97.4),
    ("DP-LoRA", 82.2, 97.1),
    ("DPDM", 89.2, 97.7),
    ("DP-LDM", 44.2, 95.5),
    ("DP-LDM (SD variant)", 78.8, 94.4),
]
ANCHOR_SOURCE = ("DPImageBench (Gong et al., 2025, arXiv 2503.14681), main MNIST table of its re-runs under one protocol; "
                 "DP-FETA-Pro from arXiv 2601.06368 under the same protocol")
