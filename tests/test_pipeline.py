"""dvc.yaml is complete: every stage's deps cover the osplab code its command runs, for any stage.

For each stage the command's entry points are found (`python -m X`, `torchrun ... -m X`, and the
notebook of `papermill NB OUT`, whose code cells' osplab imports count), then every osplab module they
import, transitively, by parsing the sources with `ast` (nothing is imported). A module whose file is
not under one of the stage's deps is a stale-output bug: change that file and `dvc repro` would keep
the old results. Package `__init__.py` files count unless they only hold a docstring and constants.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
PARAMS = OmegaConf.load(REPO / "params.yaml")


def expand(stages: dict) -> dict:
    """dvc.yaml stages with every `foreach`/`do` stage expanded to `name@key` (${item}, ${key})."""
    out = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        items = stage["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
        for key, item in pairs:
            text = json.dumps(stage["do"]).replace("${item}", str(item)).replace("${key}", str(key))
            out[f"{name}@{key}"] = json.loads(text)
    return out


STAGES = expand(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def resolve(text: str, params=PARAMS) -> str:
    """dvc.yaml's `${a.b}` templating, filled from params.yaml."""
    def value(match):
        found = OmegaConf.select(params, match.group(1).strip())
        assert found is not None, f"dvc.yaml uses ${{{match.group(1)}}}, which params.yaml does not have"
        return str(found)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def module_file(name: str) -> Path | None:
    """osplab.a.b -> osplab/a/b.py or osplab/a/b/__init__.py (None if not an osplab module)."""
    if name != "osplab" and not name.startswith("osplab."):
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Absolute names of every module an AST imports (function-level imports too).

    `from P import x` yields P and, when it is a module, P.x; relative imports are resolved against
    `package`; every parent package of a name is imported too (its __init__ runs)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def is_inert(tree: ast.Module) -> bool:
    """Only a docstring and constant assignments (e.g. __version__): running it cannot change a result."""
    return all(isinstance(s, ast.Expr | ast.Assign | ast.AnnAssign) and isinstance(s.value, ast.Constant)
               for s in tree.body)


def notebook_tree(path: Path) -> ast.Module:
    """The code cells of a notebook as one module (IPython magics and shell lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    code = []
    for cell in cells:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            code.append("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return ast.parse("\n\n".join(code), filename=str(path))


def entry_points(cmd: str) -> tuple[list[str], list[Path]]:
    """(modules run with `-m` or as the `osplab` command, notebooks run by papermill) of a stage command.

    A `python path/to/file.py` script counts as the module of that path."""
    tokens = shlex.split(cmd)
    modules = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "-m"]
    modules += ["osplab.cli" for t in tokens if t == "osplab"]
    modules += [t[:-3].replace("/", ".") for t in tokens if t.endswith(".py") and (REPO / t).is_file()]
    notebooks = [REPO / tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "papermill"]
    return modules, notebooks


@lru_cache(maxsize=None)  # both deps tests survey every stage's command; read-only for its callers
def code_files(cmd: str) -> dict[Path, str]:
    """Every file a stage command runs -> why (the file or notebook that imports it first)."""
    modules, notebooks = entry_points(cmd)
    found: dict[Path, str] = {nb: "the command" for nb in notebooks}
    todo = [(m, "the command") for m in modules]
    for nb in notebooks:
        todo += [(m, str(nb.relative_to(REPO))) for m in imported_modules(notebook_tree(nb), "")]
    while todo:
        name, why = todo.pop()
        path = module_file(name)
        if path is None or path in found:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if path.name == "__init__.py" and is_inert(tree):
            continue
        found[path] = why
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += [(m, str(path.relative_to(REPO))) for m in imported_modules(tree, package)]
    return found


def uncovered(stage: dict) -> list[str]:
    """Files the stage's command runs that none of its deps (files or folders) covers."""
    deps = [(REPO / resolve(d if isinstance(d, str) else next(iter(d)))).resolve() for d in stage.get("deps", [])]
    missing = []
    for path, why in sorted(code_files(resolve(stage["cmd"])).items()):
        if not any(path == d or d in path.parents for d in deps):
            missing.append(f"{path.relative_to(REPO)} (imported by {why})")
    return missing


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(name):
    missing = uncovered(STAGES[name])
    assert not missing, f"dvc.yaml stage {name!r}: add to its deps: " + "; ".join(missing)


# Whole folders a stage may list instead of its files: the training loop, which every training or
# checkpoint-reading stage imports nearly all of through osplab.train's __init__.
FOLDER_DEPS = {"osplab/train"}


def extra_code_deps(stage: dict) -> list[str]:
    """osplab code deps the stage's command never runs (each one re-runs the stage for nothing when it
    changes), and osplab folders other than FOLDER_DEPS (a new file in them would do the same)."""
    runs = {str(p.relative_to(REPO)) for p in code_files(resolve(stage["cmd"]))}
    extra = []
    for dep in stage.get("deps", []):
        dep = resolve(dep if isinstance(dep, str) else next(iter(dep)))
        if not dep.startswith("osplab"):
            continue
        if (REPO / dep).is_dir():
            if dep not in FOLDER_DEPS:
                extra.append(f"{dep} (a folder: list the files of it that the stage runs)")
        elif dep not in runs:
            extra.append(f"{dep} (not imported)")
    return extra


def foreach_union(name: str) -> dict:
    """The expanded stages of `name`: itself, or every `name@key` of a `foreach` (they share one deps list,
    so a dep is extra only when no item runs it)."""
    return {k: v for k, v in STAGES.items() if k == name or k.startswith(name + "@")}


@pytest.mark.parametrize("name", sorted({k.split("@")[0] for k in STAGES}))
def test_stage_code_deps_are_only_the_code_it_runs(name):
    """The other direction: a dep the stage does not run makes every edit of that file cost a re-run
    (with the whole osplab/diffusion folder as a dep, a docstring edit in a module the ablations never
    import would re-run them, about 40 minutes)."""
    items = foreach_union(name)
    extra = set.intersection(*(set(extra_code_deps(stage)) for stage in items.values()))
    assert not extra, f"dvc.yaml stage {name!r}: remove from its deps: " + "; ".join(sorted(extra))


def test_the_extra_deps_check_reports_unused_files_and_folders():
    stage = {"cmd": "python -m osplab.stages.raw", "deps": ["osplab/stages/raw.py", "osplab/models/dit.py",
                                                          "osplab/diffusion", "osplab/train"]}
    assert extra_code_deps(stage) == ["osplab/models/dit.py (not imported)",
                                      "osplab/diffusion (a folder: list the files of it that the stage runs)"]


def test_the_survey_finds_transitive_imports_and_reports_them():
    """The checker itself: a stage that lists only its entry module misses what that module imports."""
    stage = {"cmd": "torchrun --standalone -m osplab.stages.train_vqvae", "deps": ["osplab/stages/train_vqvae.py"]}
    missing = [entry.split(" ")[0] for entry in uncovered(stage)]
    for expected in ("osplab/data/clips.py", "osplab/models/vqvae.py", "osplab/train/loop.py",
                     "osplab/metrics/video.py"):  # the last two only through osplab.train / osplab.tasks.vqvae
        assert expected in missing
    assert "osplab/__init__.py" not in missing  # inert: docstring and __version__
    assert "osplab/stages/train_vqvae.py" not in missing
    stage["deps"] = ["osplab"]
    assert uncovered(stage) == []


def test_console_script_and_script_paths_count():
    assert entry_points("osplab data synth profile=smoke")[0] == ["osplab.cli"]
    assert entry_points("python osplab/stages/raw.py --no-progress")[0] == ["osplab.stages.raw"]
    missing = [m.split(" ")[0] for m in uncovered({"cmd": "osplab data synth", "deps": ["osplab/cli.py"]})]
    assert "osplab/data/synthetic.py" in missing and "osplab/config.py" in missing


def test_notebook_imports_count():
    stage = {"cmd": "papermill notebooks/fvd_sanity.ipynb out.ipynb -p smoke False", "deps": ["osplab"]}
    assert uncovered(stage) == ["notebooks/fvd_sanity.ipynb (imported by the command)"]
    stage["deps"].append("notebooks/fvd_sanity.ipynb")
    assert uncovered(stage) == []
    files = code_files(stage["cmd"])
    assert REPO / "osplab/metrics/sanity.py" in files and REPO / "osplab/stages/evaluate.py" in files


def test_templated_paths_follow_params():
    smoke = OmegaConf.create({"data": {"root": "data/smoke/raw"}})
    assert resolve("${data.root}/x", smoke) == "data/smoke/raw/x"
    with pytest.raises(AssertionError, match="nope"):
        resolve("${nope.key}", smoke)


def test_raw_stage_builds_the_store_its_params_describe(tmp_path, capsys):
    """The `raw` stage writes `data.root` from `data.synthetic`: a changed setting changes the store."""
    from osplab.data.store import read_manifest, verify_store
    from osplab.stages.raw import main

    root = tmp_path / "raw"
    assert main(["--no-progress", "profile=smoke", f"data.root={root}", "data.synthetic.num_clips.val=5"]) == 0
    manifest = read_manifest(root)
    assert manifest["clips"] == {"train": 24, "val": 5, "test": 8} and verify_store(root) == []
    assert manifest["source"]["kind"] == "synthetic" and manifest["source"]["num_clips"]["val"] == 5
    missing = tmp_path / "no_videos"
    assert main(["--no-progress", "data=ucf101", f"data.source={missing}", f"data.root={tmp_path / 'u'}"]) == 1
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "u").exists()


def test_smoke_profile_outputs_are_apart_from_the_default_ones():
    """`dvc exp run -S profile=smoke` must not write its tiny data/weights over the default ones: every
    cached output (and dvclive run) moves with the profile; only committed metrics/reports are shared."""
    from osplab.config import compose

    def outs(params) -> dict[str, str]:
        found = {}
        for name, stage in STAGES.items():
            for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                found[f"{name}:{path}"] = resolve(path, params)
        return found

    default, smoke = outs(PARAMS), outs(compose(["profile=smoke"]))
    templated = [k for k in default if "${" in k]
    assert len(templated) >= 5
    for key in templated:
        assert smoke[key] != default[key] and "smoke" in smoke[key], key
    assert all(smoke[k] == default[k] and default[k].startswith(("metrics/", "reports/"))
               for k in default if k not in templated)


@pytest.mark.parametrize("module, stage", [("osplab.stages.train_vqvae", "train_vqvae"),
                                           ("osplab.stages.train_dit", "train_dit@rf"),
                                           ("osplab.stages.train_dit", "train_dit@ddpm")])
def test_a_persisted_run_is_claimed_by_the_settings_the_stage_declares(module, stage):
    """A training stage keeps its persisted run folder only for the same settings (osplab.train.provenance).
    Those must be its dvc.yaml params: more, and a change DVC ignores (a sampling setting) throws a run
    away when the stage is run by hand; fewer, and a changed setting resumes a run made with another."""
    import importlib

    declared = {p if isinstance(p, str) else next(iter(p)) for p in STAGES[stage].get("params", [])}
    assert set(importlib.import_module(module).RUN_SETTINGS) == declared


def test_settings_of_takes_exactly_the_keys_asked_for():
    from osplab.config import compose
    from osplab.train.provenance import settings_of

    cfg = compose(["profile=smoke"])
    got = settings_of(cfg, ["seed", "eval.ssim", "diffusion.rf.shift"])
    assert got == {"seed": cfg.seed, "eval.ssim": OmegaConf.to_container(cfg.eval.ssim),
                   "diffusion.rf.shift": cfg.diffusion.rf.shift}
    with pytest.raises(KeyError, match="'eval.nope' is not in the composed config"):
        settings_of(cfg, ["eval.nope"])
