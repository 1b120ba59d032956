"""The seed README's examples, run the way its text runs them.

The README describes a project folder ``project_name/pipeline/train.py`` run as
``python -m pipeline.train`` from ``project_name``, and the cache tree that appears under
``PERSIST_PATH`` (``ptd.config.get_persist_path()``). Those examples are rebuilt here literally
(with a stand-in for ``torch.nn.Linear``) and run in fresh interpreters, because "run it again"
in the README means a new process that must find the first one's results.

Where the README shows ``[hashed_bucket].pkl`` files, this version keeps one LMDB store per leaf
folder (``data.mdb``); the folder layout above it is the README's.
"""

import io
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

import persist_to_disk as ptd
from helpers import store_folders
from persist_to_disk.engine import Store

# Stands in for torch.nn.Linear: a model class importable from the project, passed as argument.
MODELS_PY = '''
class Linear:
    def __init__(self, in_features=1, out_features=1):
        self.in_features, self.out_features = in_features, out_features
'''

# The README's basic example. {project_line} is where the set_project_path example adds a line.
# The counter file lives outside the cache: one line per real computation.
TRAIN_PY = '''
import json
import os

import persist_to_disk as ptd
from pipeline.models import Linear
{project_line}

@ptd.persistf()
def train_a_model(dataset, model_cls, lr, epochs, device='cpu'):
    with open(os.environ["COUNTER_FILE"], "a") as counter:
        counter.write(f"{{dataset}} {{epochs}} {{device}}\\n")
    model = model_cls()
    model.trained_on = dataset
    model.token = os.urandom(8).hex()  # differs on every real computation
    return model

if __name__ == '__main__':
    model = train_a_model('MNIST', Linear, 1e-3, 30)
    print(json.dumps({{"persist_path": ptd.config.get_persist_path(), "model": vars(model)}}))
'''

# The README's "Additional Parameters" example.
TRAIN_GROUPBY_PY = '''
import json
import os

import persist_to_disk as ptd
from pipeline.models import Linear

@ptd.persistf(groupby=['dataset', 'epochs'], expand_dict_kwargs=['model_kwargs'],
              skip_kwargs=['device'])
def train_a_model(dataset, model_cls, model_kwargs, lr, epochs, device='cpu'):
    with open(os.environ["COUNTER_FILE"], "a") as counter:
        counter.write(f"{dataset} {epochs} {device}\\n")
    model = model_cls(**model_kwargs)
    return f"models/{dataset}/{epochs}/{os.urandom(8).hex()}.pt"  # "return path"

if __name__ == '__main__':
    device = os.environ.get("DEVICE", "cpu")
    model_kwargs = {"in_features": 2, "out_features": 3}
    if os.environ.get("REVERSE_KWARGS"):  # an equal dict built in another order
        model_kwargs = dict(reversed(list(model_kwargs.items())))
    paths = [train_a_model(dataset, Linear, model_kwargs, 1e-3, epochs, device=device)
             for dataset, epochs in [("MNIST", 20), ("MNIST", 10), ("CIFAR10", 30)]]
    print(json.dumps(paths))
'''

# The README's "Multiprocessing" note: the decorated function used by a Pool directly.
PARALLEL_PY = '''
import json
import multiprocessing
import os

import persist_to_disk as ptd

@ptd.persistf()
def square(x):
    with open(os.environ["COUNTER_FILE"], "a") as counter:
        counter.write(f"{x}\\n")
    return x * x

if __name__ == '__main__':
    results = {"parent": square(0)}  # the parent has used the cache before forking
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            results[method] = pool.map(square, range(6))
    print(json.dumps(results))
'''


@pytest.fixture
def seed_project(ptd_env, python_runner):
    """``<tmp>/project_name`` with ``pipeline/models.py``; ``write(name, source)`` adds
    ``pipeline/<name>.py`` and ``run(module, **env)`` runs ``python -m <module>`` from
    ``project_name`` in a fresh interpreter, returning the parsed JSON it printed last."""
    root = (ptd_env.tmp / "project_name").resolve()
    (root / "pipeline").mkdir(parents=True)
    (root / "pipeline" / "models.py").write_text(MODELS_PY)
    counter = ptd_env.tmp / "computations.txt"  # outside the cache and the project

    def write(name, source):
        (root / "pipeline" / f"{name}.py").write_text(source)

    def run(module="pipeline.train", cwd=None, **env):
        result = python_runner(cwd=cwd or root, module=module,
                               extra_env={"COUNTER_FILE": str(counter), **env})
        return json.loads(result.stdout.strip().splitlines()[-1])

    def computations():
        return counter.read_text().splitlines() if counter.exists() else []

    return SimpleNamespace(root=root, write=write, run=run, computations=computations)


def project_ids(home) -> dict:
    """``project_to_pids.txt`` as ``{absolute project path: id}`` (the file must be well formed:
    every line ``<path>||<id>``)."""
    ids = {}
    for line in (Path(home) / "project_to_pids.txt").read_text().splitlines():
        path, separator, pid = line.rpartition("||")
        assert separator and path and pid, f"malformed line {line!r}"
        ids[path] = pid
    return ids


def subfolders(folder) -> list:
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir())


class _KeepUnknownClasses(pickle.Unpickler):
    """Unpickle a stored key tuple in this process, naming classes it cannot import."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except ImportError:
            return f"{module}:{name}"


def stored_keys(leaf) -> list:
    store = Store(str(leaf))
    try:
        return [_KeepUnknownClasses(io.BytesIO(record.key_blob)).load()
                for _, _, record in store.scan()]
    finally:
        store.close()


# --- Basic Example ----------------------------------------------------------------------------

def test_basic_example_builds_the_readme_tree_under_persist_path(ptd_env, seed_project):
    seed_project.write("train", TRAIN_PY.format(project_line=""))
    output = seed_project.run()

    # PERSIST_PATH(=ptd.config.get_persist_path()) defaults to the settings folder's cache.
    persist = Path(output["persist_path"])
    assert persist == ptd_env.persist
    pid = project_ids(ptd_env.home)[str(seed_project.root)]
    project_root = persist / f"project_name-{pid}"
    # Exactly the README's chain of folders, one store at the function's folder.
    assert subfolders(persist) == [project_root.name]
    assert subfolders(project_root) == ["pipeline"]
    assert subfolders(project_root / "pipeline") == ["train"]
    assert subfolders(project_root / "pipeline" / "train") == ["train_a_model"]
    leaf = project_root / "pipeline" / "train" / "train_a_model"
    assert store_folders(persist) == [leaf]
    assert (leaf / "data.mdb").is_file()


def test_basic_example_run_twice_computes_once_and_returns_the_same_model(seed_project):
    seed_project.write("train", TRAIN_PY.format(project_line=""))
    first = seed_project.run()
    second = seed_project.run()  # a new interpreter, new hash seed

    assert seed_project.computations() == ["MNIST 30 cpu"]
    # The random token proves the second run returned the stored model, not a recomputed one.
    assert second["model"] == first["model"]
    assert first["model"]["trained_on"] == "MNIST"


# --- config.set_project_path ------------------------------------------------------------------

def test_set_project_path_to_pipeline_roots_the_tree_at_pipeline(ptd_env, seed_project):
    seed_project.write("train", TRAIN_PY.format(project_line=""))
    seed_project.run()  # the basic example first, as in the README
    seed_project.write("train", TRAIN_PY.format(
        project_line='ptd.config.set_project_path("./pipeline")'))
    seed_project.run()  # "add a line ... and run it again"

    # Each project folder got its own auto id, recorded as "<abs project path>||<id>".
    ids = project_ids(ptd_env.home)
    pipeline = seed_project.root / "pipeline"
    assert set(ids) == {str(seed_project.root), str(pipeline)}
    assert ids[str(seed_project.root)] != ids[str(pipeline)]
    # The new tree mirrors the layout below ./pipeline; the old one is left as it was.
    new_root = ptd_env.persist / f"pipeline-{ids[str(pipeline)]}"
    old_root = ptd_env.persist / f"project_name-{ids[str(seed_project.root)]}"
    assert subfolders(new_root) == ["train"]
    assert store_folders(ptd_env.persist) == sorted([
        new_root / "train" / "train_a_model",
        old_root / "pipeline" / "train" / "train_a_model",
    ])
    # A new tree is a new cache: the second run computed.
    assert seed_project.computations() == ["MNIST 30 cpu", "MNIST 30 cpu"]


def test_notebook_folder_setting_project_path_back_to_the_root_shares_its_autoid(
        ptd_env, seed_project, python_runner):
    seed_project.write("train", TRAIN_PY.format(project_line=""))
    seed_project.run()
    notebook = seed_project.root / "notebook"
    notebook.mkdir()
    # A notebook-like session in ~/project_name/notebook points project_path back at the root.
    result = python_runner("""
        import persist_to_disk as ptd
        ptd.config.set_project_path("..")

        @ptd.persistf()
        def evaluate(x):
            return x + 1

        print(evaluate(1))
        print(evaluate.cache_folder())
    """, cwd=notebook)

    ids = project_ids(ptd_env.home)
    assert list(ids) == [str(seed_project.root)]  # no new project id was allocated
    folder = Path(result.stdout.splitlines()[-1])
    assert folder.parent.parent == ptd_env.persist / f"project_name-{ids[str(seed_project.root)]}"


# --- Additional Parameters: groupby, expand_dict_kwargs, skip_kwargs ----------------------------

def test_groupby_example_makes_one_leaf_per_dataset_and_epochs(ptd_env, seed_project):
    seed_project.write("train", TRAIN_GROUPBY_PY)
    seed_project.run()

    pid = project_ids(ptd_env.home)[str(seed_project.root)]
    function = (ptd_env.persist / f"project_name-{pid}" / "pipeline" / "train" /
                "train_a_model")
    assert subfolders(function) == ["CIFAR10", "MNIST"]
    assert store_folders(ptd_env.persist) == [
        function / "CIFAR10" / "30", function / "MNIST" / "10", function / "MNIST" / "20"]
    # Inside a leaf the key holds neither the groupby values (they are the folders) nor the
    # skipped device; the model_kwargs dict is expanded into "model_kwargs|<key>" entries.
    assert stored_keys(function / "MNIST" / "20") == [(
        ("lr", 1e-3),
        ("model_cls", "pipeline.models:Linear"),
        ("model_kwargs|in_features", 2),
        ("model_kwargs|out_features", 3),
    )]


def test_skipped_device_and_reordered_model_kwargs_read_the_cache(seed_project):
    seed_project.write("train", TRAIN_GROUPBY_PY)
    first = seed_project.run()
    computed = seed_project.computations()
    assert computed == ["MNIST 20 cpu", "MNIST 10 cpu", "CIFAR10 30 cpu"]

    # "if we call train_a_model(..., device='cpu') and train_a_model(..., device='cuda:0'),
    # the second run will simply read the cache" -- here in a new interpreter, with the
    # model_kwargs dict built in the other order too.
    second = seed_project.run(DEVICE="cuda:0", REVERSE_KWARGS="1")
    assert second == first
    assert seed_project.computations() == computed


def test_tuple_groupby_joins_the_values_into_one_folder_with_dollars(ptd_env):
    calls = []

    @ptd.persistf(groupby=[("dataset", "epochs")])
    def train_a_model(dataset, lr, epochs):
        calls.append((dataset, epochs))
        return lr * epochs

    train_a_model("MNIST", 1e-3, 20)
    train_a_model("CIFAR10", 1e-3, 30)
    assert train_a_model("MNIST", 1e-3, 20) == pytest.approx(0.02)

    function = Path(train_a_model.cache_folder())
    assert store_folders(function) == [function / "CIFAR10$$30", function / "MNIST$$20"]
    assert calls == [("MNIST", 20), ("CIFAR10", 30)]


def test_hash_size_parameter_bounds_the_buckets_of_a_function(ptd_env):
    # "hash_size: Defaults to 500": the per-function override of config's hashsize.
    @ptd.persistf(hash_size=7)
    def square(x):
        return x * x

    for x in range(40):
        square(x)
    store = Store(square.cache_folder())
    buckets = {bucket for bucket, _, _ in store.scan()}
    assert store.read_meta()["hashsize"] == 7
    # 40 calls over 500 buckets would almost surely leave [0, 7); over 7 they fill most of it.
    assert buckets <= set(range(7)) and len(buckets) > 1


# --- Multiprocessing --------------------------------------------------------------------------

def test_persisted_function_works_with_multiprocessing_pools(ptd_env, seed_project):
    seed_project.write("parallel", PARALLEL_PY)
    results = seed_project.run(module="pipeline.parallel")

    squares = [x * x for x in range(6)]
    assert results == {"parent": 0, "fork": squares, "spawn": squares}
    # Each value was computed once across parent, fork workers and spawn workers: the spawn
    # pool (fresh interpreters) read everything the fork pool stored.
    assert sorted(seed_project.computations()) == [str(x) for x in range(6)]
    pid = project_ids(ptd_env.home)[str(seed_project.root)]
    assert store_folders(ptd_env.persist) == [
        ptd_env.persist / f"project_name-{pid}" / "pipeline" / "parallel" / "square"]
