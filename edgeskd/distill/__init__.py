"""Training: pure loss functions (``losses``), the training loop (``train``), evaluation
(``evaluate``), the report (``report``) and DDP helpers (``ddp``). Needs the ``train`` extra (torch);
import submodules explicitly so ``import edgeskd`` stays torch-free."""
