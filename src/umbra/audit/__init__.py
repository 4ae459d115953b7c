"""Privacy attacks on a finished run, as its observers could mount them (docs/audit.md).

* :mod:`~umbra.audit.roc`: ROC curves, AUC, TPR at an FPR, binomial intervals (pure);
* :mod:`~umbra.audit.membership`: loss-threshold and offline LiRA scores, the DP ceiling
  on any membership test (pure);
* :mod:`~umbra.audit.attack_summary`: one attack's figures for results.json;
* :mod:`~umbra.audit.records`: the audited members, non-members and the shadow pool;
* :mod:`~umbra.audit.query`: a model's logits on records (what its holder sees);
* :mod:`~umbra.audit.shadows`: OUT shadow models for LiRA;
* :mod:`~umbra.audit.membership_audit`: the membership audit of a model;
* :mod:`~umbra.audit.reconstruction_analytic`, :mod:`~umbra.audit.reconstruction_matching`,
  :mod:`~umbra.audit.reconstruction_scattering`, :mod:`~umbra.audit.reconstruction_metrics`,
  :mod:`~umbra.audit.reconstruction_grid`: recovering records from an update (closed form,
  gradient matching, back to pixels, PSNR/SSIM, the picture);
* :mod:`~umbra.audit.reconstruction_audit`: the reconstruction audit of one
  organisation's update (plaintext, SecAgg+ sum, DP-SGD);
* :mod:`~umbra.audit.run`: ``umbra audit DIR`` on a run folder, and the loader of a
  finished run's final model (also used by the encrypted services).

Only the run-folder entry points are imported here (they load torch on first use), so
``umbra audit`` refuses a bad folder without loading the models.
"""

from __future__ import annotations

from umbra.audit.run import FinishedModel, audit_run, load_final_model, load_finished_run

__all__ = ["FinishedModel", "audit_run", "load_final_model", "load_finished_run"]
