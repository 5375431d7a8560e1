"""imd-hpc: Learnable Irrelevant Modality Dropout (CVPR 2022) as an HPC experiment suite."""

__version__ = "0.1.0"
