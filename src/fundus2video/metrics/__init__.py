"""Evaluation metrics as torchmetrics `Metric`s (they synchronise under DDP).

`image`: PSNR, SSIM, MS-SSIM, restricted to masks, temporal score, the release's formulas;
`lpips`: LPIPS with a user-given backbone file; `frechet`, `i3d`, `fvd`: Frechet video distance.
"""
