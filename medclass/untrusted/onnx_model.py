"""An ONNX file from someone else: checked as data before onnxruntime sees a byte of it.

onnxruntime runs whatever a graph says: a `Loop` of 10^12 iterations, a `ConstantOfShape` of
40,000 x 40,000 built from a 7 KB file (folded into 6.4 GB when the session is created), an
initializer whose data lives in `/etc/shadow`, outputs that are not probabilities. So a file is
accepted only if it looks like what `export.py` writes, and every cost of running it is known,
from the file alone, before anything is allocated:

- **the file**: a regular file of at most `MAX_FILE_BYTES` (1 GiB: protobuf's own limit is 2 GiB,
  medclass's largest exports of timm backbones are a few hundred MB: VGG-16 is 0.5 GB), read
  once through `medclass.untrusted.files.read_bytes`; the session is built from the checked
  message itself, re-serialised without unknown fields, never from the path again (no
  time-of-check/time-of-use, no parser differences between this check and onnxruntime).
- **before parsing**: the protobuf wire format is walked without building anything (`_scan`), with
  onnx's own message descriptors: at most `MAX_FIELDS` fields, no groups, nesting at most 32 deep,
  and an estimate of what parsing allocates within the file's size plus `PARSE_OVERHEAD`
  (10 MB of empty nodes parse into 0.75 GB).
- **the graph's structure**: one model graph, no local functions, no training info, no sparse
  tensors, no external data (an initializer that names a file is refused, whatever the path);
  operators from the default ONNX domain only, and only those in `OPERATORS`: what medclass's
  export emits for its registered networks (the CNN, plain and channels-last, and timm's ResNets,
  VGG, EfficientNets, MobileNetV3, ConvNeXt, DenseNet, RegNet, ViT/DeiT, Swin, surveyed on random
  weights; `tests/test_untrusted_onnx.py` exports the CNN in every task, and the timm ones under
  `-m slow`, and asserts the set covers them), plus named siblings of the same kind (activations,
  normalisations, pooling). No control flow (`Loop`, `Scan`, `If`), no operator whose output shape
  depends on the data (`NonZero`, `Unique`, ...), no randomness, no sequences; no attribute
  that holds a graph, anywhere. At most `MAX_NODES` nodes.
- **tensors held in the file**: real numbers (or the integers and booleans shape arithmetic
  uses), each one's bytes computed from its declared dims and dtype in Python integers and
  matched against the data actually present, before anything is decoded.
- **memory and work by construction**: what bounds a graph's memory is the shapes of its
  values, and with the input fixed they are all computable from the file. ONNX strict shape
  inference (with shape-data propagation) runs on the graph with the input fixed to the batch
  about to be run, `(batch, in_chans, image_size, image_size)` from the file's checked metadata;
  the one emitted operator it leaves unsized, `Range` (channels-last exports flatten through
  `Range(0, batch)`), is sized from its start, limit and step, computed by a small evaluator of
  integer shape arithmetic on tensors of at most `KEEP_CONSTANT` elements (a step of 0 is
  refused). Every value must then have a fully static shape of real numbers: one that depends on
  the data, or that cannot be known, is refused. With no `Cast`, `ConstantOfShape`, `Tile` or
  `Resize` allowed, every integer tensor comes from a constant or a `Shape`, never from the image,
  so "shape-building constants" are just values of the plan. From those shapes, the peak of the
  values alive at once (a liveness walk in the graph's topological order, plus each
  convolution's im2col buffer), charged `PLAN_SLACK` times for what onnxruntime holds beyond
  it (measured per network, see the constant), must fit the memory budget (`MEMORY_BUDGET`, 2 GiB, or
  `MEDCLASS_ONNX_MEMORY_MB` from the user's environment: `budget_bytes`; a batch
  that does not fit is halved until it does, and a graph whose single image does not fit is
  refused); the arithmetic (multiply-adds of convolutions and matrix products, element counts of
  the rest) must stay within `WORK_PER_INPUT` per input value plus `WORK_BASE` per image (10^7
  and 10^10: ResNet-50 needs 2.7e4 per input value, ViT-Ti 8.7e3, VGG-16's head on 32 px 1.4e5;
  300 products of 2048² matrices on a 16 px model need 200 times its allowance). Shapes
  are inferred again for each batch size that runs, so a shape that grows faster than the batch
  (batch^8) is seen at the size actually run. On a graph whose largest intermediate value is
  750 MB, the liveness peak said 748 MB and onnxruntime's peak grew by 784 MB (the allocation
  arena is off, so memory is taken when needed and given back).
- **outputs**: float32 of shape `(batch, classes)`, finite, in [0, 1], and, unless the task is
  multi-label, rows summing to 1 (`check_probabilities`). A probe batch (zeros and a fixed
  pattern) runs when the file is opened; every later batch is checked the same way.

Error lines name the file and what was wrong; an operator is named only when it is a known ONNX
operator, never by the file's own text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medclass.untrusted.files import MiB, printable, read_bytes
from medclass.untrusted.outputs import probability_problem
from medclass.utils.errors import MedclassError

GiB = 1024 * MiB
MAX_FILE_BYTES = 1 * GiB
MAX_META_BYTES = 16 * MiB  # 100,000 class names of ~150 bytes; parsed JSON costs ~30 bytes a value
MAX_NODES = 100_000  # ViT-Ti exports 504 nodes, Swin-T 639, DenseNet-121 369
MEMORY_BUDGET = 2 * GiB  # estimated memory of one batch (`Plan.memory_bytes`); MEDCLASS_ONNX_MEMORY_MB changes it
# What onnxruntime (and the C allocator) held, over the liveness peak of the plan, measured per batch on exports of
# random-weight timm networks: ResNet-50 0.67, EfficientNet-B0 0.67, VGG-16 0.98, ConvNeXt 1.15, DenseNet 1.57,
# Swin-T 2.9, ViT-Ti 4.3-4.9 (many short-lived values of distinct sizes). The budget is charged this many times the
# liveness peak.
PLAN_SLACK = 5
BUDGET_VARIABLE = "MEDCLASS_ONNX_MEMORY_MB"
WORK_PER_INPUT = 10**7  # multiply-adds per input value (measured: ResNet-50 2.7e4, Swin-T 3.1e4, VGG-16 on 32 px 1.4e5)
WORK_BASE = 10**10  # plus per image: a head on a tiny input (VGG-16's 4096-wide MLP: ~1.2e8)
KEEP_CONSTANT = 4096  # initializers up to this many elements stay in the shape plan (shape vectors)
META_KEY = "medclass"
OPSETS = range(11, 1000)  # the default domain's versions; the upper end is onnx's own (checked below)

# What medclass's export emits (the union over the networks its tests export) ...
EMITTED = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Div", "Erf", "Expand", "Gather", "GatherND",
    "Gemm", "HardSigmoid", "HardSwish", "LayerNormalization", "MatMul", "MaxPool", "Mul", "Pad", "ReduceMean", "Relu",
    "Range", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Squeeze", "Transpose", "Unsqueeze",
})
# ... and siblings of the same kind: element-wise maths, activations, normalisations, pooling, reductions. Each has
# an output shape fixed by its inputs' shapes and constant attributes, so the shape plan covers it; none turns a
# value into an integer (no Cast, ArgMax) or builds a shape (no ConstantOfShape, Tile, Resize): every integer tensor
# in an accepted graph, Range's bounds included, comes from a constant or a Shape, never from the image.
SIBLINGS = frozenset({
    "Abs", "Ceil", "Cos", "Elu", "Exp", "Floor", "Gelu", "GlobalAveragePool", "GlobalMaxPool", "GroupNormalization",
    "InstanceNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "Max", "Mean", "Min", "Mish",
    "Neg", "PRelu", "Pow", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceSumSquare",
    "Round", "Selu", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tanh", "ThresholdedRelu",
    "Celu", "Identity", "Flatten", "Split", "Constant",
})
OPERATORS = EMITTED | SIBLINGS
# Never, whatever a survey finds: control flow, data-dependent output shapes, randomness, sequences, custom code
FORBIDDEN = frozenset({
    "Loop", "Scan", "If", "NonZero", "Unique", "NonMaxSuppression", "Compress", "TopK", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "SequenceConstruct",
    "SequenceAt", "SequenceInsert", "SplitToSequence", "ConcatFromSequence", "StringNormalizer", "TfIdfVectorizer",
    "Optional", "OptionalGetElement",
})

# Value types a graph may hold: real numbers, and the integers and booleans of shape arithmetic
_REAL = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
         "UINT64", "BOOL")
# Multiply-adds per output element: input channels per group x kernel (Conv), the inner dimension (Gemm, MatMul)
_KERNEL_OPS = ("Conv",)
_POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
# onnxruntime may copy an input of these (a transpose to softmax along an inner axis, a packed matrix)
_COPYING_OPS = ("Softmax", "LogSoftmax", "MatMul", "Gemm")


class UnsafeGraph(MedclassError):
    """An ONNX file that is not a graph medclass can run safely; the message names the file and the reason."""


def _onnx() -> Any:
    from medclass.utils.extras import require

    return require("onnx", "onnx", "running an ONNX file (onnx_path=)")


@dataclass
class Plan:
    """What one batch costs, from the shapes inferred for it."""

    batch: int
    peak_bytes: int  # the most bytes of values alive at once (and a convolution's im2col buffer)
    work: int
    output_shape: tuple[int, ...]
    output_type: str

    @property
    def memory_bytes(self) -> int:
        """What the batch is charged against the budget: the liveness peak times `PLAN_SLACK`."""
        return self.peak_bytes * PLAN_SLACK


@dataclass
class CheckedGraph:
    """A file that passed the structural checks: its bytes for onnxruntime, its metadata text, and a copy of the
    graph without the large tensors' data, for planning each batch size."""

    source: str
    data: bytes
    metadata: str
    input_name: str
    output_name: str
    skeleton: Any  # onnx.ModelProto with large initializers turned into typed inputs
    initializer_bytes: int
    plans: dict[int, Plan] = field(default_factory=dict)

    def fail(self, what: str) -> UnsafeGraph:
        return UnsafeGraph(f"{self.source} {what}")

    def plan(self, batch: int, in_chans: int, image_size: int) -> Plan:
        """The cost of running `batch` images, from strict shape inference with the input fixed to that size;
        refused when a value's shape is not static or the work exceeds its bound (memory is the caller's, who
        may split the batch)."""
        if batch not in self.plans:
            self.plans[batch] = _plan(self, batch, in_chans, image_size)
        plan = self.plans[batch]
        per_image = in_chans * image_size * image_size
        if plan.work > batch * (WORK_BASE + WORK_PER_INPUT * per_image):
            raise self.fail(f"needs about {plan.work:.3g} multiply-adds for {batch} image(s) of {in_chans}x"
                            f"{image_size}x{image_size}, more than any network medclass exports "
                            f"({WORK_BASE:g} + {WORK_PER_INPUT:g} per input value, per image)")
        return plan


# -- before the protobuf parser: what parsing would cost ------------------------------------------------------------
MAX_FIELDS = 2_000_000  # protobuf fields in the whole file (ViT-L: ~40,000; tensors' data are one field each)
PARSE_OVERHEAD = 256 * MiB  # parsed size beyond the file's own bytes: each message costs ~150 bytes parsed
# parsed bytes per field, above what was measured with onnx's upb protobuf (149 a message, 40 a string, 64 a
# string pair, 20 a packed varint byte)
_MESSAGE_COST, _STRING_COST, _SCALAR_COST, _PACKED_VARINT_COST = 192, 48, 8, 24
_VARINT_TYPES = ("TYPE_INT32", "TYPE_INT64", "TYPE_UINT32", "TYPE_UINT64", "TYPE_SINT32", "TYPE_SINT64", "TYPE_BOOL",
                 "TYPE_ENUM")
_LAYOUTS: dict[str, dict[int, tuple[str, Any]]] = {}


def _layout(descriptor: Any) -> dict[int, tuple[str, Any]]:
    """field number -> (kind, message descriptor) for one message type, from onnx's own descriptors."""
    if descriptor.full_name not in _LAYOUTS:
        layout: dict[int, tuple[str, Any]] = {}
        for f in descriptor.fields:
            if f.type == f.TYPE_MESSAGE:
                layout[f.number] = ("message", f.message_type)
            elif f.type in (f.TYPE_STRING, f.TYPE_BYTES):
                layout[f.number] = ("bytes", None)
            else:
                layout[f.number] = ("varint" if f.type in {getattr(f, n) for n in _VARINT_TYPES} else "fixed", None)
        _LAYOUTS[descriptor.full_name] = layout
    return _LAYOUTS[descriptor.full_name]


def _scan(data: bytes, source: str) -> None:
    """Walk the protobuf wire format of a ModelProto without building it: count its fields and estimate what
    parsing would allocate (a 2-byte empty message parses into ~150 bytes: 10 MB of empty nodes parse into 0.8 GB),
    and refuse before parsing when either is beyond its bound. Groups and nesting deeper than 32 are refused."""
    onnx = _onnx()
    view = memoryview(data)
    fields = 0
    cost = 0

    def refuse(why: str) -> UnsafeGraph:
        return UnsafeGraph(f"{source} is not a loadable ONNX model ({why}); export one with python export.py "
                           "ckpt_path=<ckpt>")

    def varint(pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise refuse("a truncated or overlong varint")
            byte = view[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7

    def walk(pos: int, end: int, descriptor: Any, depth: int) -> None:
        nonlocal fields, cost
        if depth > 32:
            raise refuse("messages nested deeper than 32")
        layout = _layout(descriptor)
        while pos < end:
            tag, pos = varint(pos, end)
            number, wire = tag >> 3, tag & 7
            fields += 1
            if fields > MAX_FIELDS:
                raise refuse(f"more than {MAX_FIELDS:,} protobuf fields, far more than any network's graph")
            kind, child = layout.get(number, ("unknown", None))
            if wire == 0:
                _, pos = varint(pos, end)
                cost += _SCALAR_COST
            elif wire == 1 or wire == 5:
                pos += 8 if wire == 1 else 4
                cost += _SCALAR_COST
            elif wire == 2:
                length, pos = varint(pos, end)
                if pos + length > end:
                    raise refuse("a field longer than the message that holds it")
                if kind == "message":
                    cost += _MESSAGE_COST
                    walk(pos, pos + length, child, depth + 1)
                else:  # a string, bytes, packed numbers (a 1-byte varint can take 8 bytes, 20 as parsed), unknown
                    cost += _STRING_COST + length * (_PACKED_VARINT_COST if kind == "varint" else 1)
                pos += length
            else:
                raise refuse("a protobuf group or an invalid wire type")
            if cost > len(data) + PARSE_OVERHEAD:
                raise refuse(f"its structure would take more than {PARSE_OVERHEAD / MiB:g} MiB beyond its own "
                             "size to parse")
        if pos != end:
            raise refuse("a field longer than the message that holds it")

    walk(0, len(data), onnx.ModelProto.DESCRIPTOR, 0)


def read_graph(path: str | Path, what: str = "onnx_path=", max_bytes: int = MAX_FILE_BYTES) -> CheckedGraph:
    """`path` read once, parsed and checked for structure (see the module docstring); nothing is run."""
    onnx = _onnx()
    source = f"{what}{path}"
    data = read_bytes(path, "ONNX file", max_bytes)
    _scan(data, source)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf's DecodeError, or a message nested past its recursion limit
        raise UnsafeGraph(f"{source} is not a loadable ONNX model (not an ONNX protobuf message); export one with "
                          "python export.py ckpt_path=<ckpt>") from None
    del data
    model.DiscardUnknownFields()  # what is checked is exactly what onnxruntime gets
    graph = _Structure(source, model).check()
    payload = model.SerializeToString()
    return CheckedGraph(source, payload, graph.metadata, graph.input_name, graph.output_name, graph.skeleton(),
                        graph.tensor_bytes)


class _Structure:
    """The structural checks of one parsed model (module docstring: the file's structure, its tensors)."""

    def __init__(self, source: str, model: Any) -> None:
        self.onnx = _onnx()
        self.source, self.model, self.graph = source, model, model.graph
        self.tensor_bytes = 0
        self.metadata = ""
        self.input_name = self.output_name = ""

    def fail(self, what: str) -> UnsafeGraph:
        return UnsafeGraph(f"{self.source} {what}; only graphs exported by medclass (python export.py) are run")

    def check(self) -> _Structure:
        onnx, model, graph = self.onnx, self.model, self.graph
        if not model.HasField("graph"):
            raise UnsafeGraph(f"{self.source} is not a loadable ONNX model (it holds no graph); export one with "
                              "python export.py ckpt_path=<ckpt>")
        if model.ir_version < 3 or model.ir_version > onnx.IR_VERSION:
            raise self.fail(f"has IR version {model.ir_version}, outside the 3..{onnx.IR_VERSION} this onnx reads")
        if len(model.functions) or len(model.training_info):
            raise self.fail("defines its own functions or training steps")
        for opset in model.opset_import:
            if opset.domain not in ("", "ai.onnx"):
                raise self.fail("imports an operator set outside the default ONNX domain")
            if opset.version not in OPSETS or opset.version > onnx.defs.onnx_opset_version():
                raise self.fail(f"asks for ONNX opset {opset.version}, outside {OPSETS.start}.."
                                f"{onnx.defs.onnx_opset_version()}")
        if len(graph.sparse_initializer):
            raise self.fail("holds sparse initializers")
        if len(graph.node) > MAX_NODES:
            raise self.fail(f"has {len(graph.node):,} nodes, more than the {MAX_NODES:,} this reader takes")
        initializers = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise self.fail(f"has {len(inputs)} inputs and {len(graph.output)} outputs, not one image input and one "
                            "output of probabilities")
        for value in (*inputs, *graph.output):
            if value.type.WhichOneof("value") != "tensor_type" or \
                    value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise self.fail("has an input or output that is not a float32 tensor")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        self._metadata()
        self._tensors(graph.initializer, "an initializer")
        for index, node in enumerate(graph.node):
            self._node(index, node)
        return self

    def _metadata(self) -> None:
        found = [p.value for p in self.model.metadata_props if p.key == META_KEY]
        if not found:
            raise UnsafeGraph(f"{self.source} carries no class names or preprocessing (metadata key {META_KEY!r}); "
                              "export it with python export.py ckpt_path=<ckpt>")
        if len(found) > 1:
            raise self.fail(f"carries metadata key {META_KEY!r} {len(found)} times")
        if len(found[0].encode()) > MAX_META_BYTES:
            raise self.fail(f"carries {len(found[0].encode()) / MiB:.1f} MiB of metadata under {META_KEY!r}, more "
                            f"than the {MAX_META_BYTES / MiB:g} MiB of any model's class names")
        self.metadata = found[0]

    def _node(self, index: int, node: Any) -> None:
        where = f"node {index}"
        if node.domain not in ("", "ai.onnx"):
            raise self.fail(f"{where} uses an operator outside the default ONNX domain")
        if node.op_type not in OPERATORS or node.op_type in FORBIDDEN:
            shown = f" {node.op_type}" if self.onnx.defs.has(node.op_type) else ""  # a known name, never file text
            raise self.fail(f"{where} is an operator{shown} that medclass's export does not emit")
        A = self.onnx.AttributeProto
        for attribute in node.attribute:
            if attribute.ref_attr_name:
                raise self.fail(f"{where} has an attribute that refers to a function's")
            if attribute.type in (A.GRAPH, A.GRAPHS) or len(attribute.graphs) or attribute.HasField("g"):
                raise self.fail(f"{where} holds a graph in an attribute")
            if attribute.type in (A.SPARSE_TENSOR, A.SPARSE_TENSORS, A.TYPE_PROTO, A.TYPE_PROTOS) or \
                    attribute.HasField("sparse_tensor") or len(attribute.sparse_tensors) or attribute.HasField("tp"):
                raise self.fail(f"{where} holds a sparse tensor or a type in an attribute")
            self._tensors([attribute.t] if attribute.HasField("t") else [], f"{where}'s attribute tensor")
            self._tensors(attribute.tensors, f"{where}'s attribute tensors")

    def _tensors(self, tensors: Iterable[Any], what: str) -> None:
        """Each tensor's bytes from its dims and dtype (Python integers), matched against the data it holds;
        no external data, whatever it names."""
        onnx = self.onnx
        T = onnx.TensorProto
        for tensor in tensors:
            if tensor.data_location == T.EXTERNAL or len(tensor.external_data) or tensor.HasField("segment"):
                raise self.fail(f"has {what} whose data is stored outside the file (external data is refused)")
            type_name = T.DataType.Name(tensor.data_type) if tensor.data_type in T.DataType.values() else "?"
            if type_name not in _REAL:
                raise self.fail(f"has {what} of type {type_name}, not real numbers")
            if any(d < 0 for d in tensor.dims) or len(tensor.dims) > 16:
                raise self.fail(f"has {what} with negative dimensions or more than 16 of them")
            count = int(np.prod([int(d) for d in tensor.dims], dtype=object)) if len(tensor.dims) else 1
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            size = count * itemsize
            if tensor.HasField("raw_data"):
                held, expected = len(tensor.raw_data), size
            else:
                held, expected = len(getattr(tensor, onnx.helper.tensor_dtype_to_field(tensor.data_type))), count
            if held != expected:
                raise self.fail(f"has {what} that declares {count:,} values of {type_name} but holds "
                                f"{held:,} {'bytes' if tensor.HasField('raw_data') else 'values'}")
            self.tensor_bytes += size

    def skeleton(self) -> Any:
        """The graph with its large initializers as typed inputs (their data left out): shape inference needs
        only their types, and the small ones hold the shape vectors that data propagation reads."""
        onnx = self.onnx
        graph = onnx.GraphProto(name="skeleton")
        graph.node.extend(self.graph.node)
        graph.input.extend(i for i in self.graph.input if i.name == self.input_name)
        graph.output.extend(self.graph.output)
        for tensor in self.graph.initializer:
            count = int(np.prod([int(d) for d in tensor.dims], dtype=object)) if len(tensor.dims) else 1
            if count <= KEEP_CONSTANT:
                graph.initializer.append(tensor)
            else:
                graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                      [int(d) for d in tensor.dims]))
        model = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                       ir_version=self.model.ir_version)
        # parsed afresh: a message copied from another may share its memory (upb fuses arenas), and the file's
        # tensors must not stay alive through the skeleton
        return onnx.ModelProto.FromString(model.SerializeToString())


def _static_shape(value: Any) -> tuple[tuple[int, ...], int] | None:
    """(shape, element type) of a value whose inferred shape is fully known, else None."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim
    if any(d.WhichOneof("value") != "dim_value" for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims), value.type.tensor_type.elem_type


def _static_shapes(graph: Any) -> dict[str, tuple[tuple[int, ...], int]]:
    """(shape, element type) of every value of an inferred graph whose shape is fully known."""
    shapes = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        static = _static_shape(value)
        if static is not None:
            shapes[value.name] = static
    for tensor in graph.initializer:
        shapes[tensor.name] = (tuple(int(d) for d in tensor.dims), tensor.data_type)
    return shapes


# Shape arithmetic evaluated here, on integer tensors of at most KEEP_CONSTANT elements: what feeds a Range in the
# exports of channels-last networks (`Range(0, batch)` of as_strided), which ONNX shape inference leaves unsized.
_ARITHMETIC = ("Constant", "Identity", "Shape", "Squeeze", "Unsqueeze", "Gather", "Slice", "Concat", "Add", "Sub",
               "Mul", "Div", "Reshape")


def _size_ranges(checked: CheckedGraph, graph: Any, shapes: dict[str, tuple[tuple[int, ...], int]]) -> list[Any]:
    """Value infos sizing each unsized Range whose start, limit and delta can be computed from constants and
    static shapes (`_evaluate`); its element count is computed, never its elements."""
    onnx = _onnx()
    producers = {out: node for node in graph.node for out in node.output}
    constants = {t.name: t for t in graph.initializer}
    known: dict[str, np.ndarray | None] = {}

    def value(name: str, depth: int = 0) -> np.ndarray | None:
        if name in known:
            return known[name]
        known[name] = None  # while being computed, and when it cannot be: unknown
        result = None
        if name in constants:
            result = onnx.numpy_helper.to_array(constants[name])
        elif name in producers and depth < 64:
            node = producers[name]
            result = _evaluate(node, [value(n, depth + 1) if n else None for n in node.input], shapes)
        if result is not None and (result.dtype.kind not in "iu" or result.size > KEEP_CONSTANT):
            result = None
        known[name] = result
        return result

    sized = []
    for node in graph.node:
        if node.op_type != "Range":
            continue
        bounds = [value(n) for n in node.input]
        if any(b is None or b.size != 1 for b in bounds):
            continue  # unsized: refused by the plan
        start, limit, delta = (int(np.asarray(b).reshape(())) for b in bounds)
        if delta == 0:
            raise checked.fail("has a Range with a step of 0 (it would never end)")
        if node.output[0] in shapes:
            continue
        count = max(-(-(limit - start) // delta), 0)
        elem = shapes[node.input[0]][1] if node.input[0] in shapes else onnx.TensorProto.INT64
        sized.append(onnx.helper.make_tensor_value_info(node.output[0], elem, [count]))
    return sized


def _evaluate(node: Any, inputs: list[np.ndarray | None], shapes: dict[str, tuple[tuple[int, ...], int]]
              ) -> np.ndarray | None:
    """One node of shape arithmetic (`_ARITHMETIC`) on small integer arrays, or None when it is not that."""
    attrs = {a.name: a for a in node.attribute}
    op = node.op_type
    try:
        if op == "Constant":
            return _onnx().numpy_helper.to_array(attrs["value"].t) if "value" in attrs else None
        if op == "Shape":
            if node.input[0] not in shapes:
                return None
            dims = shapes[node.input[0]][0]
            start = attrs["start"].i if "start" in attrs else 0
            end = attrs["end"].i if "end" in attrs else len(dims)
            return np.array(dims[start:end], np.int64)
        if op not in _ARITHMETIC or inputs[0] is None:
            return None
        first = inputs[0]
        if op == "Identity":
            return first
        if op in ("Squeeze", "Unsqueeze"):
            axes = inputs[1] if len(inputs) > 1 else np.array(attrs["axes"].ints if "axes" in attrs else [])
            if axes is None:
                return None
            axes = tuple(int(x) for x in np.asarray(axes).reshape(-1))
            if op == "Squeeze":
                return np.squeeze(first, axes) if axes else np.squeeze(first)
            return np.expand_dims(first, axes)
        if any(x is None for x in inputs):
            return None
        rest = [np.asarray(x) for x in inputs[1:]]
        if op in ("Gather", "Concat") and first.size * sum(x.size for x in rest) > KEEP_CONSTANT ** 2:
            return None  # bounded before it is computed (the result is checked again by the caller)
        if op == "Gather":
            return np.take(first, rest[0], axis=attrs["axis"].i if "axis" in attrs else 0)
        if op == "Slice":
            starts, ends = rest[0], rest[1]
            axes = rest[2] if len(rest) > 2 else np.arange(len(starts))
            steps = rest[3] if len(rest) > 3 else np.ones(len(starts), np.int64)
            index = [slice(None)] * first.ndim
            for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
                index[int(a)] = slice(int(s), int(e), int(st))
            return first[tuple(index)]
        if op == "Concat":
            return np.concatenate([first, *rest], axis=attrs["axis"].i)
        if op == "Reshape":
            return first.reshape([int(d) for d in rest[0]])
        if int(np.prod(np.broadcast_shapes(first.shape, rest[0].shape))) > KEEP_CONSTANT:
            return None
        a, b = first.astype(np.int64), rest[0].astype(np.int64)
        if op == "Div":  # integer division truncates toward zero, exactly
            return None if (b == 0).any() else np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError):
        return None


def _plan(checked: CheckedGraph, batch: int, in_chans: int, image_size: int) -> Plan:
    """Infer every value's shape at this batch size and walk the graph: peak bytes alive and work."""
    onnx = _onnx()
    model = onnx.ModelProto()
    model.CopyFrom(checked.skeleton)
    image = next(i for i in model.graph.input if i.name == checked.input_name)
    declared = image.type.tensor_type.shape.dim
    wanted = (batch, in_chans, image_size, image_size)
    if len(declared) != 4 or any(d.WhichOneof("value") == "dim_value" and d.dim_value != w
                                 for d, w in zip(declared[1:], wanted[1:], strict=True)) or \
            declared[0].WhichOneof("value") == "dim_value" and declared[0].dim_value not in (batch, 0):
        raise checked.fail(f"takes an input that is not (batch, {in_chans}, {image_size}, {image_size}) with a "
                           "dynamic batch, as its metadata says and as export.py writes it")
    image.type.tensor_type.ClearField("shape")
    for w in wanted:
        image.type.tensor_type.shape.dim.add().dim_value = w
    try:
        onnx.checker.check_model(model)  # well formed: topological order, known operators, valid attributes
    except Exception as err:  # onnx's ValidationError: the message may quote node names
        raise checked.fail(f"is not a well-formed ONNX graph ({type(err).__name__} from the ONNX checker)") from None
    for output in model.graph.output:  # declared shapes are the file's word: inferred from the input alone
        output.type.tensor_type.ClearField("shape")
    ranges = sum(node.op_type == "Range" for node in model.graph.node)
    for _ in range(ranges + 1):  # each pass sizes the Range nodes whose bounds the last one made known
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        except Exception as err:  # onnx's InferenceError: the message may quote node names
            raise checked.fail(f"is not a consistent graph for a batch of {batch} ({type(err).__name__} from ONNX "
                               "shape inference)") from None
        graph = inferred.graph
        shapes = _static_shapes(graph)
        sized = _size_ranges(checked, graph, shapes)
        if not sized:
            break
        model.graph.value_info.extend(sized)
    constants = {t.name for t in graph.initializer} | {i.name for i in graph.input if i.name != checked.input_name}
    T = onnx.TensorProto

    def nbytes(name: str) -> int:
        dims, elem = shapes[name]
        return int(np.prod(dims, dtype=object)) * onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize

    def elements(name: str) -> int:
        return int(np.prod(shapes[name][0], dtype=object))

    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = index
    last_use[checked.output_name] = len(graph.node)
    alive = {checked.input_name: nbytes(checked.input_name)}
    total = alive[checked.input_name]  # bytes alive, kept as a sum: a walk linear in the nodes
    peak = work = 0
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name not in shapes:
                raise checked.fail(f"has a value (output of node {index}) whose shape cannot be known before "
                                   "running (it depends on the data, or on a tensor too large to plan with), which "
                                   "medclass's export never does")
            if T.DataType.Name(shapes[name][1]) not in _REAL:
                raise checked.fail(f"has a value (output of node {index}) that is not real numbers")
            alive[name] = nbytes(name)
        inputs = [n for n in node.input if n]
        out = sum(elements(n) for n in node.output if n)
        workspace = 0
        if node.op_type in _KERNEL_OPS and len(inputs) > 1:
            weight = shapes[inputs[1]][0]  # (out channels, in channels / group, *kernel)
            per_output = int(np.prod(weight[1:], dtype=object))
            work += out * per_output
            out_spatial = int(np.prod(shapes[node.output[0]][0][2:], dtype=object))
            workspace = per_output * out_spatial * 4  # im2col: one image's columns, float32
        elif node.op_type in ("Gemm", "MatMul") and len(inputs) > 1:
            a = shapes[inputs[0]][0]
            transposed = any(x.name == "transA" and x.i for x in node.attribute)
            inner = (a[-2] if transposed and len(a) > 1 else a[-1]) if a else 1
            work += out * max(int(inner), 1)
        elif node.op_type in _POOL_OPS:
            kernel = next((list(x.ints) for x in node.attribute if x.name == "kernel_shape"), [1])
            work += out * int(np.prod(kernel, dtype=object))
        else:
            work += out + sum(elements(n) for n in inputs if n in shapes)
        if node.op_type in _COPYING_OPS:  # a transposed or packed copy of an input, at most its size
            workspace = max(workspace, max((nbytes(n) for n in inputs if n in shapes), default=0))
        total += sum(nbytes(n) for n in node.output if n)
        peak = max(peak, total + workspace)
        for name in {*inputs, *node.output}:
            if name in alive and last_use.get(name, -1) <= index and name not in constants:
                total -= alive.pop(name)
    output = shapes.get(checked.output_name)
    if output is None:
        raise checked.fail("has an output whose shape cannot be known before running")
    return Plan(batch, peak, work, output[0], T.DataType.Name(output[1]))


def fit(checked: CheckedGraph, batch: int, in_chans: int, image_size: int, memory_budget: int = MEMORY_BUDGET) -> int:
    """The largest batch size, `batch` halved until its plan fits `memory_budget`; refused when even one image
    does not fit. Every size is planned from its own shapes (a plan need not grow with the batch)."""
    size = batch
    while True:
        plan = checked.plan(size, in_chans, image_size)
        if plan.memory_bytes <= memory_budget:
            return size
        if size == 1:
            raise checked.fail(f"needs about {plan.memory_bytes / GiB:.1f} GiB of memory for one image of "
                               f"{in_chans}x{image_size}x{image_size}, more than the {memory_budget / GiB:g} GiB "
                               f"budget ({BUDGET_VARIABLE}, in MiB, raises it where the machine has the memory)")
        size = max(1, size // 2)


def budget_bytes() -> int:
    """The memory budget of one ONNX batch in bytes: `MEDCLASS_ONNX_MEMORY_MB` (MiB, the user's own environment),
    else `MEMORY_BUDGET`."""
    raw = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not raw:
        return MEMORY_BUDGET
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 16 <= value <= 2**20:  # NaN fails too
        raise MedclassError(f"{BUDGET_VARIABLE}={printable(raw, 40)} is not a number of MiB from 16 to "
                            f"{2**20:,}; unset it for the default of {MEMORY_BUDGET // MiB} MiB per ONNX batch, or "
                            f"raise it, e.g. {BUDGET_VARIABLE}=8192")
    return int(value * MiB)


def check_probabilities(out: Any, batch: int, classes: int, task: str, source: str) -> np.ndarray:
    """`out` when it is float32 probabilities of shape (batch, classes) (`outputs.probability_problem`);
    otherwise one line naming `source`."""
    problem = probability_problem(out, batch, classes, task, float32_only=True)
    if problem:
        raise UnsafeGraph(f"{source} returned {problem}, not probabilities")
    return out


def probe_batch(in_chans: int, image_size: int) -> np.ndarray:
    """The fixed input a file must answer with valid probabilities when opened: zeros, and a pattern across
    the normalised range (a checkerboard of ramps from -3 to 3)."""
    ramp = np.linspace(-3.0, 3.0, image_size * image_size, dtype=np.float32).reshape(image_size, image_size)
    checker = np.where((np.add.outer(np.arange(image_size), np.arange(image_size)) % 2) == 0, 1.0, -1.0)
    pattern = np.broadcast_to((ramp * checker).astype(np.float32), (in_chans, image_size, image_size))
    return np.stack([np.zeros_like(pattern), pattern])


def threads() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def open_session(checked: CheckedGraph) -> Any:
    """An onnxruntime session on the CPU, built from the checked bytes (never the path), with threads bounded to
    this process's cores and allocations made as planned (no arena that keeps the peak)."""
    from medclass.utils.extras import require

    ort = require("onnxruntime", "onnx", "running an ONNX file (onnx_path=)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    options.add_session_config_entry("session.load_model_format", "ONNX")
    try:
        return ort.InferenceSession(checked.data, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # its message can quote node names: the type only
        raise UnsafeGraph(f"{checked.source} is not a loadable ONNX model (onnxruntime: {type(err).__name__}); "
                          "export it again with python export.py ckpt_path=<ckpt>") from None
