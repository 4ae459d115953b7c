"""What one ``umbra run`` is made of, one module per part: the data (`prepare`), the run
folder (`folder`), the federated runner on Flower's simulation engine (`simulation`), the
centralized baseline (`centralized`) and ``results.json`` (`results`).
`umbra.experiment.run_experiment` puts them together."""

__all__: list[str] = []
