"""DP synthetic multimodal data of a finished run (``umbra synth``, docs/synthetic.md).

Organisation side: :mod:`~umbra.synth.feature_map` (each modality's fixed map to unit
vectors, and back), :mod:`~umbra.synth.statistics` (clipped sufficient statistics: pure),
:mod:`~umbra.synth.release` (their Gaussian noise from the privacy stream). Server side:
:mod:`~umbra.synth.noise_plan` (σ per statistic for an ε), :mod:`~umbra.synth.federated_fit`
(ledger first, then each organisation's release, summed), :mod:`~umbra.synth.generator`
(the class-conditional Gaussian: fit, sample, density). Released data and its measures:
:mod:`~umbra.synth.synthetic_set` (the folder), :mod:`~umbra.synth.render` (images back to
pixels), :mod:`~umbra.synth.tstr` (train on synthetic, test on real; the linear classifier),
:mod:`~umbra.synth.network_classifier` (the run's architecture as TSTR classifier),
:mod:`~umbra.synth.fidelity` (Fréchet distance), :mod:`~umbra.synth.membership_attack`;
:mod:`~umbra.synth.synthesis` runs them in order, :mod:`~umbra.synth.command` is the CLI.

Only the loaders are imported here; the rest loads torch and scikit-learn on first use.
"""

from umbra.synth.synthetic_set import load_synthetic

__all__ = ["load_synthetic"]
