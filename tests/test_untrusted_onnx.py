"""ONNX files from strangers (issue 35, items 5 and 6): checked before onnxruntime sees them, costs known from the
file, outputs that must be probabilities. The attacks are built by `hostile` from a real medclass export, so each
one differs from a file medclass writes by the one thing under test; the lead's attack table reuses it."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from medclass.module.onnx import OnnxModel
from medclass.tasks.export import export_onnx
from medclass.untrusted import onnx_model
from medclass.utils.errors import MedclassError

from .conftest import clean_tree, run_script
from .test_predict import tiny_classifier

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

CANARY = "CANARY_7f3a"  # written into hostile files where a careless error line would quote it


def _const(name: str, values: object, dtype: int = TensorProto.FLOAT, dims: list[int] | None = None) -> object:
    array = np.asarray(values)
    return helper.make_tensor(name, dtype, list(array.shape) if dims is None else dims, array.flatten().tolist())


def _opened(base: Path) -> object:
    """The base export with its output node writing `p0`; an attack adds nodes that end in `probabilities`."""
    model = onnx.load(str(base))
    for node in model.graph.node:
        node.output[:] = ["p0" if o == "probabilities" else o for o in node.output]
    return model


def _mixed_in(model: object, term: str) -> None:
    """`probabilities = p0 + 0 * mean(term)`: the output looks normal, the cost of `term` is paid anyway."""
    model.graph.initializer.append(_const("zero_c", 0.0))
    model.graph.node.extend([helper.make_node("ReduceMean", [term], ["term_mean"], keepdims=0),
                             helper.make_node("Mul", ["term_mean", "zero_c"], ["term_zero"]),
                             helper.make_node("Add", ["p0", "term_zero"], ["probabilities"])])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _set_meta(model: object, meta_text: str) -> None:
    del model.metadata_props[:]
    helper.set_model_props(model, {"medclass": meta_text})


ATTACKS = ("loop", "constant_of_shape", "not_probabilities", "nan_output", "external_shadow", "external_parent",
           "huge_dims", "if_subgraph", "graph_attribute", "custom_domain", "local_function", "many_nodes",
           "huge_metadata", "nested_metadata", "int_output", "wrong_shape", "batch_power", "broadcast",
           "matmul_chain", "unknowable_shape", "op_name_canary", "fixed_batch", "range_huge", "range_endless",
           "parse_bomb")


def hostile(kind: str, base: Path, out: Path) -> Path:
    """Write the attack `kind` (one of ATTACKS), built from `base` (a real 2-class, 1x16x16 medclass export), to
    `out`. Each is a file a stranger could send as `onnx_path=`."""
    if kind == "parse_bomb":  # 5,000,000 empty nodes appended (protobuf merges a second graph field): 10 MB on disk,
        # 0.75 GB once parsed, before any check on the parsed message could run
        nodes = b"\x0a\x00" * 5_000_000
        out.write_bytes(base.read_bytes() + b"\x3a" + _varint(len(nodes)) + nodes)
        return out
    model = _opened(base)
    graph = model.graph
    if kind == "loop":  # 10^12 iterations of nothing: a hang
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
            "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                     helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])])
        graph.initializer.extend([_const("trips", 10**12, TensorProto.INT64, []), _const("go", True, TensorProto.BOOL,
                                                                                          []), _const("v0", [0.0])])
        graph.node.append(helper.make_node("Loop", ["trips", "go", "v0"], ["looped"], body=body))
        _mixed_in(model, "looped")
    elif kind == "constant_of_shape":  # 40,000 x 40,000 float32 = 6.4 GB from a few bytes
        graph.initializer.append(_const("big_shape", [40000, 40000], TensorProto.INT64))
        graph.node.append(helper.make_node("ConstantOfShape", ["big_shape"], ["big"], value=_const("v", [0.0])))
        _mixed_in(model, "big")
    elif kind == "not_probabilities":  # [7.5, -3.0] for every image
        graph.initializer.extend([_const("zero_c", 0.0), _const("fake", [[7.5, -3.0]])])
        graph.node.extend([helper.make_node("Mul", ["p0", "zero_c"], ["p_zero"]),
                           helper.make_node("Add", ["p_zero", "fake"], ["probabilities"])])
    elif kind == "nan_output":
        graph.initializer.append(_const("nan_c", float("nan")))
        graph.node.append(helper.make_node("Add", ["p0", "nan_c"], ["probabilities"]))
    elif kind in ("external_shadow", "external_parent"):  # an initializer whose bytes live in a file it names
        tensor = helper.make_tensor("ext", TensorProto.FLOAT, [4], [0.0] * 4)
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        location = "/etc/shadow" if kind == "external_shadow" else "../../x"
        for key, value in (("location", location), ("offset", "0"), ("length", "16")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        graph.initializer.append(tensor)
        _mixed_in(model, "ext")
    elif kind == "huge_dims":  # declares 10^10 floats, holds 16 bytes
        tensor = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[100000, 100000], raw_data=b"\0" * 16)
        graph.initializer.append(tensor)
        _mixed_in(model, "huge")
    elif kind == "if_subgraph":  # a branch is a graph: whatever it holds is not checked by a flat op list
        branch = helper.make_graph([helper.make_node("Constant", [], ["b_out"], value=_const("b", [0.0]))], "branch",
                                   [], [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [1])])
        graph.initializer.append(_const("cond", True, TensorProto.BOOL, []))
        graph.node.append(helper.make_node("If", ["cond"], ["branched"], then_branch=branch, else_branch=branch))
        _mixed_in(model, "branched")
    elif kind == "graph_attribute":  # a graph hidden in an allowed operator's attribute
        inner = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], CANARY,
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        softmax = next(n for n in graph.node if n.op_type == "Softmax")
        softmax.attribute.append(helper.make_attribute("body", inner))
        graph.node.append(helper.make_node("Identity", ["p0"], ["probabilities"]))
    elif kind == "custom_domain":  # onnxruntime's own contrib operators: a kernel set nobody checked here
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        graph.node.append(helper.make_node("Gelu", ["p0"], ["gelu"], domain="com.microsoft"))
        _mixed_in(model, "gelu")
    elif kind == "local_function":  # a function whose body would be inlined: a Loop could hide there
        model.opset_import.append(helper.make_opsetid("evil.domain", 1))
        function = helper.make_function("evil.domain", "Relu", ["x"], ["y"], [helper.make_node("Identity", ["x"],
                                                                                                ["y"])],
                                        [helper.make_opsetid("", 18)])
        model.functions.append(function)
        graph.node.append(helper.make_node("Relu", ["p0"], ["relu"], domain="evil.domain"))
        _mixed_in(model, "relu")
    elif kind == "many_nodes":  # a chain longer than any network's
        count = onnx_model.MAX_NODES + 1
        names = ["p0", *(f"n{i}" for i in range(count - 1)), "probabilities"]
        graph.node.extend(helper.make_node("Identity", [a], [b]) for a, b in zip(names, names[1:], strict=False))
    elif kind == "huge_metadata":  # 20 MiB of metadata JSON: parsing it costs far more than the file
        meta = json.loads(next(p.value for p in model.metadata_props if p.key == "medclass"))
        meta["class_counts"] = [1.5] * (5 * 2**20)
        graph.node.append(helper.make_node("Identity", ["p0"], ["probabilities"]))
        _set_meta(model, json.dumps(meta))
    elif kind == "nested_metadata":
        graph.node.append(helper.make_node("Identity", ["p0"], ["probabilities"]))
        _set_meta(model, "[" * 2_000_000 + "]" * 2_000_000)
    elif kind == "int_output":
        graph.node.append(helper.make_node("Cast", ["p0"], ["probabilities"], to=TensorProto.INT64))
        graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    elif kind == "wrong_shape":  # four columns for two class names
        graph.node.append(helper.make_node("Concat", ["p0", "p0"], ["probabilities"], axis=1))
    elif kind == "batch_power":  # harmless for the probe's batch, batch^8 values for a batch of 32
        graph.initializer.extend([_const("one_c", [1.0]), _const("i0", [0], TensorProto.INT64),
                                  _const("i1", [1], TensorProto.INT64)])
        graph.node.extend([helper.make_node("Shape", ["image"], ["shape"]),
                           helper.make_node("Slice", ["shape", "i0", "i1"], ["b1"])])
        previous = "b1"
        for power in range(2, 9):
            graph.node.append(helper.make_node("Mul", [previous, "b1"], [f"b{power}"]))
            previous = f"b{power}"
        graph.node.append(helper.make_node("Expand", ["one_c", "b8"], ["grown"]))
        _mixed_in(model, "grown")
    elif kind == "broadcast":  # two 160 KB vectors, one 6.4 GB sum: ConstantOfShape's twin with an allowed operator
        graph.initializer.extend([_const("col", np.zeros((40000, 1))), _const("row", np.zeros((1, 40000)))])
        graph.node.append(helper.make_node("Add", ["col", "row"], ["outer"]))
        _mixed_in(model, "outer")
    elif kind == "matmul_chain":  # 300 products of 2048 x 2048 matrices: 2.6e12 multiply-adds, little memory
        graph.initializer.extend([_const("one_c", [1.0]), _const("square", [2048, 2048], TensorProto.INT64)])
        graph.node.append(helper.make_node("Expand", ["one_c", "square"], ["m0"]))
        for i in range(300):
            graph.node.append(helper.make_node("MatMul", [f"m{i}", f"m{i}"], [f"m{i + 1}"]))
        _mixed_in(model, "m300")
    elif kind == "unknowable_shape":  # a reshape to a shape held in a tensor too large to read for planning
        ones = [-1, 2] + [1] * (onnx_model.KEEP_CONSTANT + 10)
        graph.initializer.append(_const("shape_big", ones, TensorProto.INT64))
        graph.node.append(helper.make_node("Reshape", ["p0", "shape_big"], ["odd"]))
        _mixed_in(model, "odd")
    elif kind == "op_name_canary":  # an unknown operator whose name an error line must not repeat
        graph.node.append(helper.make_node(CANARY, ["p0"], ["probabilities"]))
    elif kind in ("range_huge", "range_endless"):  # Range is emitted (channels-last exports): 10^12 indices, or step 0
        step = 0 if kind == "range_endless" else 1
        graph.initializer.extend([_const("r0", 0, TensorProto.INT64, []), _const("r1", 10**12, TensorProto.INT64, []),
                                  _const("r_step", step, TensorProto.INT64, [])])
        graph.node.append(helper.make_node("Range", ["r0", "r1", "r_step"], ["indices"]))
        graph.node.append(helper.make_node("Gather", ["p0", "indices"], ["gathered"], axis=1))
        _mixed_in(model, "gathered")
    elif kind == "fixed_batch":  # the input declares one image only
        graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        graph.node.append(helper.make_node("Identity", ["p0"], ["probabilities"]))
    else:
        raise ValueError(kind)
    out.write_bytes(model.SerializeToString())
    return out


def base_export(folder: Path) -> Path:
    """A real export of a tiny 2-class CNN (1 channel, 16 px), as export.py writes it: what `hostile` starts from."""
    return export_onnx(tiny_classifier("multi-class", ["a", "b"]), folder / "base.onnx")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_export(tmp_path_factory.mktemp("onnx_base"))


EXPECTED = {  # what each refusal says (a regular expression on the one line)
    "loop": r"node \d+ is an operator Loop that medclass's export does not emit",
    "constant_of_shape": r"operator ConstantOfShape that medclass's export does not emit",
    "not_probabilities": r"outside \[0, 1\]",
    "nan_output": r"not finite",
    "external_shadow": r"stored outside the file \(external data is refused\)",
    "external_parent": r"stored outside the file",
    "huge_dims": r"declares 10,000,000,000 values of FLOAT but holds 16 bytes",
    "if_subgraph": r"operator If that",
    "graph_attribute": r"holds a graph in an attribute",
    "custom_domain": r"imports an operator set outside the default ONNX domain",
    "local_function": r"defines its own functions",
    "many_nodes": r"has 100,0\d\d nodes, more than the 100,000",
    "huge_metadata": r"MiB of metadata under 'medclass', more than the 16 MiB",
    "nested_metadata": r"metadata 'medclass'\) is not readable JSON \(RecursionError\)",
    "int_output": r"input or output that is not a float32 tensor",
    "wrong_shape": r"not float32 probabilities of shape \(1, 2\)",
    "batch_power": r"GiB of memory for one image|multiply-adds",
    "broadcast": r"needs about 29\.8 GiB of memory for one image of 1x16x16, more than the 2 GiB budget "
                 r"\(MEDCLASS_ONNX_MEMORY_MB",
    "matmul_chain": r"needs about 2\.\d+e\+12 multiply-adds for 1 image",
    "unknowable_shape": r"shape cannot be known before running",
    "op_name_canary": r"is an operator that medclass's export does not emit",
    "fixed_batch": r"not \(batch, 1, 16, 16\) with a dynamic batch",
    "range_huge": r"multiply-adds|GiB of memory for one image",
    "range_endless": r"has a Range with a step of 0",
    "parse_bomb": r"is not a loadable ONNX model \(its structure would take more than 256 MiB beyond its own size",
}


@pytest.mark.parametrize("kind", [k for k in ATTACKS if k != "batch_power"])
def test_each_hostile_graph_is_refused_in_one_line_before_it_runs(base: Path, tmp_path: Path, kind: str) -> None:
    """Every attack ends in one MedclassError naming the file, quickly and without quoting the file's text."""
    path = hostile(kind, base, tmp_path / f"{kind}.onnx")
    start = time.perf_counter()
    with pytest.raises(MedclassError) as caught:
        OnnxModel(path)
    message = str(caught.value)
    assert f"onnx_path={path}" in message and "\n" not in message
    rest = message.replace(str(path), "")
    assert CANARY not in rest and "/etc/" not in rest and "../" not in rest
    assert re.search(EXPECTED[kind], message), message
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize(("payload", "why"), [
    (b"\x72\x00" * 2_000_000, "more than 256 MiB beyond its own size"),  # 2M empty metadata entries: 4 MB, 0.13 GB
    (b"\x1b" * 10, "a protobuf group"), (b"\x3a\x80\x01" + b"\x0a\x00" * 3, "longer than the message")])
def test_the_wire_format_is_bounded_before_parsing(tmp_path: Path, payload: bytes, why: str) -> None:
    path = tmp_path / "wire.onnx"
    path.write_bytes(payload)
    with pytest.raises(MedclassError, match=f"onnx_path={path} is not a loadable ONNX model .*{why}"):
        onnx_model.read_graph(path)


def test_the_wire_scan_counts_every_field(tmp_path: Path) -> None:
    """A graph of 2,000,001 empty input names (4 MB, 80 MB parsed): refused by the field count, not parsed."""
    names = b"\x0a\x00" * (onnx_model.MAX_FIELDS + 1)
    node = b"\x0a" + _varint(len(names)) + names
    path = tmp_path / "names.onnx"
    path.write_bytes(b"\x3a" + _varint(len(node)) + node)
    with pytest.raises(MedclassError, match="more than 2,000,000 protobuf fields"):
        onnx_model.read_graph(path)


def test_a_shape_that_grows_faster_than_the_batch_is_seen_at_the_batch_that_runs(base: Path, tmp_path: Path) -> None:
    """batch^8 values: 1 for one image, 256 for the probe's two; a batch of 32 would ask for 10^12 and is refused
    before onnxruntime runs it, because each batch size is planned from its own shapes."""
    model = OnnxModel(hostile("batch_power", base, tmp_path / "power.onnx"))
    assert model(np.zeros((3, 1, 16, 16), np.float32)).shape == (3, 2)
    with pytest.raises(MedclassError, match=EXPECTED["batch_power"]):
        model(np.zeros((32, 1, 16, 16), np.float32))


def test_probabilities_must_be_float_finite_in_range_and_sum_to_one() -> None:
    ok = np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
    assert onnx_model.check_probabilities(ok, 2, 2, "multi-class", "f") is ok
    labels = np.array([[0.9, 0.8]], np.float32)  # multi-label: independent probabilities
    assert onnx_model.check_probabilities(labels, 1, 2, "multi-label", "f") is labels
    for bad, task, message in [(labels, "binary-class", "do not sum to 1"), (labels, "ordinal-regression", "sum"),
                               (np.array([[7.5, -3.0]], np.float32), "multi-label", r"outside \[0, 1\]"),
                               (np.array([[np.inf, 0]], np.float32), "multi-label", "not finite"),
                               (ok.astype(np.float64), "multi-class", "float64"),
                               (ok.astype(np.int64), "multi-class", "int64"),
                               (ok[:, :1], "multi-class", r"shape \(2, 1\)"), (ok[None], "multi-class", "shape")]:
        with pytest.raises(MedclassError, match=message):
            onnx_model.check_probabilities(bad, len(bad), 2, task, "f")


def test_a_batch_over_the_memory_budget_runs_in_pieces_with_the_same_probabilities(base: Path) -> None:
    """The plan of a batch of 64 exceeds a small budget, so it runs as smaller batches: same numbers; a budget
    below one image's plan is refused when the file is opened."""
    images = np.random.default_rng(0).normal(size=(64, 1, 16, 16)).astype(np.float32)
    whole = OnnxModel(base)
    one = whole.graph.plan(1, 1, 16).memory_bytes
    assert whole.graph.plan(64, 1, 16).memory_bytes > 8 * one
    small = OnnxModel(base, memory_budget=4 * one)
    np.testing.assert_allclose(small(images), whole(images), atol=1e-6)
    assert small.graph.plans[64].memory_bytes > 4 * one and 32 in small.graph.plans  # planned, then halved
    assert 32 not in whole.graph.plans
    with pytest.raises(MedclassError, match="GiB of memory for one image"):
        OnnxModel(base, memory_budget=one // 2)


def test_the_memory_budget_comes_from_the_users_environment(base: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDCLASS_ONNX_MEMORY_MB raises the budget (the broadcast attack's 6 GiB, charged 30, then passes the plan:
    the user said so) or refuses a value that is not a number of MiB, naming the variable."""
    assert onnx_model.budget_bytes() == onnx_model.MEMORY_BUDGET
    monkeypatch.setenv(onnx_model.BUDGET_VARIABLE, "40000")
    assert onnx_model.budget_bytes() == 40000 * 2**20
    graph = onnx_model.read_graph(hostile("broadcast", base, tmp_path / "b.onnx"))
    assert onnx_model.fit(graph, 1, 1, 16, onnx_model.budget_bytes()) == 1
    for bad in ("lots", "nan", "0", "1e12"):
        monkeypatch.setenv(onnx_model.BUDGET_VARIABLE, bad)
        with pytest.raises(MedclassError, match="MEDCLASS_ONNX_MEMORY_MB=.* is not a number of MiB from 16"):
            OnnxModel(base)


def test_the_probe_runs_when_the_file_is_opened(base: Path, tmp_path: Path) -> None:
    """A graph that answers zeros correctly but not the fixed pattern is refused when opened, not on some later
    image: 1000 x mean(image²) is added to its output (0 for zeros, about 3000 for the pattern)."""
    pattern = onnx_model.probe_batch(1, 16)
    assert pattern.shape == (2, 1, 16, 16) and not pattern[0].any() and float((pattern[1] ** 2).mean()) > 1
    model = _opened(base)
    model.graph.initializer.append(_const("thousand", 1000.0))
    model.graph.node.extend([helper.make_node("Mul", ["image", "image"], ["squared"]),
                             helper.make_node("ReduceMean", ["squared"], ["energy"], keepdims=0),
                             helper.make_node("Mul", ["energy", "thousand"], ["boost"]),
                             helper.make_node("Add", ["p0", "boost"], ["probabilities"])])
    path = tmp_path / "probe.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(MedclassError, match=r"on a probe batch \(zeros and a fixed pattern\) when opened returned "
                                            r"values outside \[0, 1\]"):
        OnnxModel(path)


def test_files_that_are_not_regular_files_are_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(MedclassError, match=f"ONNX file {fifo} is not a regular file"):
        OnnxModel(fifo)
    assert time.perf_counter() - start < 5
    for junk in (b"not onnx", b"\x08" * 100):  # the second is a valid protobuf message: version fields, no graph
        (tmp_path / "junk.onnx").write_bytes(junk)
        with pytest.raises(MedclassError, match="is not a loadable ONNX model"):
            OnnxModel(tmp_path / "junk.onnx")


def test_the_allowlist_covers_what_medclass_exports_and_nothing_that_hides_a_cost(tmp_path: Path) -> None:
    """Every task's export of the CNN uses only OPERATORS and loads; control flow and data-dependent shapes are
    never in the set."""
    from medclass.module import Classifier

    for task, names in (("multi-class", ["a", "b", "c"]), ("binary-class", ["x", "y"]),
                        ("multi-label", ["p", "q", "r"]), ("ordinal-regression", ["0", "1", "2"])):
        path = export_onnx(tiny_classifier(task, names), tmp_path / f"{task}.onnx")
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ops <= onnx_model.EMITTED, ops - onnx_model.EMITTED
        assert OnnxModel(path).meta["task"] == task
    # trained with channels_last (the default): flattening is exported as as_strided, Range(0, batch) and Gather
    hparams = tiny_classifier("multi-class", ["a", "b"]).hparams
    module = Classifier(net=hparams.net, data_info=hparams.data_info, optimizer=hparams.optimizer, channels_last=True)
    path = export_onnx(module.eval(), tmp_path / "channels_last.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Range" in ops and ops <= onnx_model.EMITTED, ops - onnx_model.EMITTED
    model = OnnxModel(path)
    images = np.random.default_rng(1).normal(size=(37, 1, 16, 16)).astype(np.float32)
    import torch

    with torch.no_grad():
        expected = torch.softmax(module.net(torch.as_tensor(images)), 1).numpy()
    np.testing.assert_allclose(model(images), expected, atol=1e-5)
    assert model.graph.plans[37].output_shape == (37, 2)
    assert not onnx_model.OPERATORS & onnx_model.FORBIDDEN
    assert not onnx_model.OPERATORS & {"ConstantOfShape", "Tile", "Resize", "Cast", "Loop"}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "channels_last"), [
    ("resnet18", 32, False), ("resnet18", 32, True), ("tf_efficientnet_lite0", 32, False), ("resnet50", 32, False),
    ("vgg16", 32, False), ("vgg16", 32, True), ("efficientnet_b0", 32, False), ("mobilenetv3_small_100", 32, False),
    ("convnext_atto", 32, False), ("densenet121", 32, False), ("regnety_002", 32, False),
    ("vit_tiny_patch16_224", 224, False), ("swin_tiny_patch4_window7_224", 224, False)])
def test_timm_backbones_export_within_the_allowlist(tmp_path: Path, name: str, size: int, channels_last: bool) -> None:
    """The timm networks of the survey behind EMITTED (random weights, offline) export to graphs inside it, open,
    and run; channels-last training changes some graphs (VGG's pooling becomes Range and Gather)."""
    from medclass.module import Classifier

    info = {"task": "multi-class", "class_names": ["a", "b", "c"], "in_chans": 3, "image_size": size,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    module = Classifier(net={"arch": "timm", "name": name}, data_info=info, channels_last=channels_last,
                        optimizer={"_target_": "torch.optim.Adam", "_partial_": True})
    path = export_onnx(module.eval(), tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops <= onnx_model.EMITTED, ops - onnx_model.EMITTED
    assert OnnxModel(path)(np.zeros((2, 3, size, size), np.float32)).shape == (2, 3)


@pytest.mark.parametrize("kind", ["loop", pytest.param("not_probabilities", marks=pytest.mark.slow)])
def test_predict_on_a_hostile_file_is_one_error_line(base: Path, tmp_path: Path, kind: str) -> None:
    """Through the command line: exit 2, one `error:` line naming the file, no traceback, in seconds."""
    path = hostile(kind, base, tmp_path / f"{kind}.onnx")
    images = clean_tree(tmp_path / "in", per_class=2)
    start = time.perf_counter()
    proc = run_script("predict.py", f"onnx_path={path}", f"inputs={images}", f"hydra.run.dir={tmp_path / 'out'}",
                      timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], proc.stderr[-2000:]
    assert time.perf_counter() - start < 110  # the command's start-up included, on a loaded 2-core machine
    assert not (tmp_path / "out" / "predictions.csv").exists()
