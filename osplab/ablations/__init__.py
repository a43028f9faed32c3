"""osplab.ablations: the Open-Sora-Plan claims, each tested by one parameterized notebook.

- sampling_steps.py: FVD and caption accuracy vs function evaluations (RF Euler / Heun, DDPM ancestral / DDIM).

Each module holds the sweep, the verdict on its claim and the report writer (Markdown table, CSV, PNG);
the notebook in notebooks/ablation_<name>.ipynb calls them and the DVC stage of the same name runs it.
"""
