"""When is a horizontal strip of a float Conv bit-exact with the unsplit Conv off the NCHWc path?

Pure Python, no dependencies.  Models ONNX Runtime's CPU Conv (``Conv`` and the fused ``FusedConv``)
when it runs through MLAS ``MlasConvPrepare``/``MlasConv`` (onnxruntime/core/mlas/lib/convolve.cpp),
i.e. on ARM64 builds (no NCHWc kernels) or on x86 with the ``NchwcTransformer`` disabled.

Why a strip can differ
----------------------
Every output element is a dot product of length ``K = (Cin/group) * kh * kw``.  MLAS splits that
dot product into K-blocks; each block is accumulated in one register (sequential fused multiply-adds)
and the blocks are added into the output one after another.  The block size depends on how many
output pixels (``N``) the GEMM call that computes the element covers, and that ``N`` depends on the
number of output rows and on how threads slice them.  A strip is a conv with fewer output rows, so
an element can land in a call with a different ``N``, a different K-block size and a different
rounding.  The order *within* a block does not depend on the element's column position (the SGEMM
kernels use the same FMA chain for full and partial column tiles), so two computations of an element
are bit-identical iff they use the same kind of kernel and the same K-block boundaries.  That pair is
the *signature* this module computes for every output pixel.

Rules (ORT 1.32 era sources; file / function / constant)
--------------------------------------------------------
Constants (mlasi.h): MLAS_SGEMM_STRIDEN = MLAS_SGEMM_STRIDEK = 128, MLAS_SGEMM_STRIDEN_THREAD_ALIGN = 16,
MLAS_SGEMM_THREAD_COMPLEXITY = 64*1024, MLAS_MAXIMUM_THREAD_COUNT = 16 (same on AMD64 and ARM64 in
current sources; pre-2020 sources used 2M / 1M complexity and no ORT thread pool).

1. Algorithm (convolve.cpp, MlasConvPrepare):
   * all strides 1 and all four pads 0 and kh*kw == 1 (K == InputChannels)       -> GemmDirect, B not transposed
   * same, 2-D, dilations 1, InputChannels == 1 and kw == input W               -> GemmDirect, B transposed
   * same, 2-D, dilations 1, InputChannels == 1, kh == input H and kw == 1      -> GemmDirect, B not transposed
   * else FilterCount (Cout/group) > OutputSize (out_h*out_w)                     -> ExpandThenGemm
   * else                                                                         -> ExpandThenGemmSegmented
2. Thread slicing of ExpandThenGemmSegmented, group == 1 and batch == 1 (MlasConvPrepare +
   MlasConvTryMultithread): Complexity = FilterCount*OutputSize*K; Target = int(Complexity/65536)+1
   (16 if Complexity >= 65536*16), min(Target, T) where T = MlasGetMaximumThreadCount = ThreadPool::
   DegreeOfParallelism = intra_op_num_threads (1 when there is no pool).  ThreadStrideN =
   ceil(OutputSize/Target), rounded up to 16 when Target > 1.  If ThreadStrideN >= OutputSize: one
   segment; else segments of ThreadStrideN pixels (the last shorter).
   Grouped or batched convs (newest sources: MlasConvExpandThenGemmSegmentedThreaded) run every
   (batch, group) whole: one segment [0, OutputSize).
3. K-blocks in a segment (convolve.cpp MlasConvOperation, same rule as sgemm.cpp MlasSgemmOperation):
   StrideN = StrideK = 128; if SegN >= K: halve StrideK while StrideK/2 >= K (one block);
   else: while StrideN > 16 and StrideN/2 >= SegN: StrideK *= 2, StrideN /= 2.
   So for K > 128 the block is 128 (SegN > 64), 256 (33..64), 512 (17..32), 1024 (<= 16) pixels...
   of K, capped at K.  Blocks are [0,S), [S,2S), ...; each is im2col'ed and passed to
   MlasSgemmOperation(M=FilterCount, N=CountN<=StrideN, K=CountK), which never splits it again
   (its own StrideK is >= CountK), and added into the output (beta = 1 after the first block).
4. MlasSgemmOperation special paths (sgemm.cpp):
   * M == 1 (FilterCount 1, e.g. depthwise with multiplier 1), TransA NoTrans, alpha 1, beta 0/1:
     AMD64 -> KernelM1Routine / KernelM1TransposeBRoutine (whole K, AVX mul+add);
     ARM64 -> MlasGemvFloatKernel when TransB == NoTrans (whole K); with TransB it falls through.
     Both accumulate straight into C (SgemvKernelNeon.S: one fmla chain starting from C;
     SgemmKernelM1Avx.S: C += ((p0+p1)+p2)+p3 per 4 k), so K-blocking does not change the result.
   * N == 1 and ldb == 1 and ldc == 1 (only when OutputSize == 1): AMD64 only, M1 transposed kernel.
   * otherwise the blocked GEMM (MlasSgemmKernelZero/Add on ARM64, GemmFloatKernel on AMD64).
5. GemmDirect / ExpandThenGemm call MlasGemm -> MlasGemmBatch (sgemm.cpp): Target =
   int(M*N*K/65536)+1, min T.  If N > M: BlockedN = ceil(N/16); threads = min(Target, BlockedN);
   thread i gets MlasPartitionWork(i, threads, BlockedN) blocks of 16 pixels (last clipped), and runs
   MlasSgemmOperation(M, RangeCountN, K) -> K-blocks from rule 3 with N = RangeCountN.
   Else (N <= M) threads split M and every call has N = OutputSize.  ExpandThenGemm always has
   M = FilterCount > N = OutputSize, so N = OutputSize.  Grouped/batched GemmDirect
   (MlasConvGemmDirectThreaded) calls MlasSgemmOperation(FilterCount, OutputSize, K) per group.
6. The bias (MlasActivation) is added after all K-blocks, per element.  Identity/Relu/LeakyRelu/Clip/
   HardSigmoid activations are per element.  Logistic/Tanh run MlasComputeLogistic/Tanh over each
   GEMM chunk (ldc != N) or the whole plane: a vector body and a scalar tail; see ``OTHER_OPS``.
7. ARM64 with SME (USE_KLEIDIAI builds, platform.cpp: MlasConvPrepareOverride/MlasConvOverride/
   MlasSGemmBatchOverride are installed only if HasArm_SME(); dw_conv_kleidiai.cpp requires SME2):
   KleidiAI convs need symmetric padding (all four equal) and 3x3 depthwise needs out_h >= 4; a strip
   with edited top/bottom pads falls back to MLAS while the unsplit conv does not.  Not modelled:
   ``strip_is_exact`` returns False for such targets whenever the unsplit conv may be overridden.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

# mlasi.h
MLAS_SGEMM_STRIDEN = 128
MLAS_SGEMM_STRIDEK = 128
MLAS_SGEMM_STRIDEN_THREAD_ALIGN = 16
MLAS_SGEMM_THREAD_COMPLEXITY = 64 * 1024
MLAS_MAXIMUM_THREAD_COUNT = 16

TARGETS = ("x86_64-nonchwc", "aarch64")  # the MLAS paths these rules describe

GEMM_DIRECT = "GemmDirect"
EXPAND_THEN_GEMM = "ExpandThenGemm"
SEGMENTED = "ExpandThenGemmSegmented"


@dataclass(frozen=True)
class ConvGeometry:
    """One 2-D Conv as ORT hands it to MlasConvPrepare (NCHW, batch 1 unless said otherwise).

    pads are ONNX order: (top, left, bottom, right).  out_h/out_w may be left None: computed.
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    in_h: int
    in_w: int
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    group: int = 1
    batch: int = 1
    out_h: int | None = None
    out_w: int | None = None

    def __post_init__(self):
        kh, kw = self.kernel
        dh, dw = self.dilation
        sh, sw = self.stride
        pt, pl, pb, pr = self.pads
        oh = (self.in_h + pt + pb - ((kh - 1) * dh + 1)) // sh + 1
        ow = (self.in_w + pl + pr - ((kw - 1) * dw + 1)) // sw + 1
        if self.out_h is None:
            object.__setattr__(self, "out_h", oh)
        if self.out_w is None:
            object.__setattr__(self, "out_w", ow)
        if self.in_channels % self.group or self.out_channels % self.group:
            raise ValueError("channels not divisible by group")

    # MLAS_CONV_PARAMETERS fields
    @property
    def input_channels(self) -> int:  # per group
        return self.in_channels // self.group

    @property
    def filter_count(self) -> int:  # per group
        return self.out_channels // self.group

    @property
    def k(self) -> int:
        return self.input_channels * self.kernel[0] * self.kernel[1]

    @property
    def output_size(self) -> int:
        return self.out_h * self.out_w

    def strip(self, in_rows: int, pad_top: int, pad_bottom: int, out_rows: int) -> "ConvGeometry":
        """The same conv on a strip: fewer input rows, edited top/bottom pads."""
        pt, pl, pb, pr = self.pads
        return replace(self, in_h=in_rows, pads=(pad_top, pl, pad_bottom, pr), out_h=out_rows)


@dataclass(frozen=True)
class Signature:
    """How one output element is computed: the kernel kind and the K-block size.

    kernel: "gemm" (blocked SGEMM kernel), "gemv" (ARM64 MlasGemvFloatKernel, M == 1),
    "m1" / "m1t" (AMD64 KernelM1Routine / KernelM1TransposeBRoutine), "n1" (AMD64 N == 1 path).
    kblock: the K-block size, capped at K (so kblock == K means one block); 0 for the M == 1
    kernels, whose result does not depend on the K-blocks.
    """

    kernel: str
    kblock: int


# ---------------------------------------------------------------------------------------------
# SGEMM helpers (sgemm.cpp)


def sgemm_stride_k(n: int, k: int) -> int:
    """StrideK chosen by MlasSgemmOperation / MlasConvOperation for a call covering n columns."""
    stride_n, stride_k = MLAS_SGEMM_STRIDEN, MLAS_SGEMM_STRIDEK
    if n >= k:
        while stride_k // 2 >= k:
            stride_n *= 2
            stride_k //= 2
    else:
        while stride_n > 16 and stride_n // 2 >= n:
            stride_k *= 2
            stride_n //= 2
    return stride_k


def sgemm_call_signature(m: int, n: int, k: int, target: str, trans_b: bool = False,
                         ldb: int | None = None, ldc: int | None = None) -> Signature:
    """Signature of every element of one MlasSgemmOperation call (alpha 1, beta 0 or 1)."""
    ldb = n if ldb is None else ldb
    ldc = n if ldc is None else ldc
    if m == 1:
        # Both M == 1 kernels accumulate straight into C, so the K-blocks do not matter (kblock 0):
        # ARM64 SgemvKernelNeon.S starts its accumulators from C (or 0) and runs one fmla chain
        # over k; AMD64 SgemmKernelM1Avx.S adds ((p0+p1)+p2)+p3 into C every 4 k, and every
        # K-block size (128 * 2^j) is a multiple of 4.
        if target == "x86_64-nonchwc":
            # KernelM1TransposeBRoutine: measured (halpc tests/exactness_cases.py: a depthwise
            # 3x3 conv over a 3-wide input, whose kernel spans the width) to round a column
            # differently with the call's column count; only the same count is taken as exact.
            return Signature(f"m1t/{n}", k) if trans_b else Signature("m1", 0)
        if not trans_b:
            return Signature("gemv", 0)
    if n == 1 and ldb == 1 and ldc == 1 and target == "x86_64-nonchwc":
        return Signature("n1", k)
    return Signature("gemm", min(sgemm_stride_k(n, k), k))


def partition_work(thread_id: int, thread_count: int, total: int) -> tuple[int, int]:
    """mlasi.h MlasPartitionWork: (start, count)."""
    per, extra = divmod(total, thread_count)
    if thread_id < extra:
        return (per + 1) * thread_id, per + 1
    return per * thread_id + extra, per


def gemm_batch_column_ranges(m: int, n: int, k: int, threads: int) -> list[tuple[int, int]]:
    """Column ranges [start, stop) of the MlasSgemmOperation calls made by MlasGemmBatch (batch 1)."""
    target = int(m * n * k / MLAS_SGEMM_THREAD_COMPLEXITY) + 1
    target = min(target, max(1, threads))
    if n > m:
        blocked_n = -(-n // MLAS_SGEMM_STRIDEN_THREAD_ALIGN)
        per_gemm = min(target, blocked_n)
        ranges = []
        for tid in range(per_gemm):
            start, count = partition_work(tid, per_gemm, blocked_n)
            start *= MLAS_SGEMM_STRIDEN_THREAD_ALIGN
            count *= MLAS_SGEMM_STRIDEN_THREAD_ALIGN
            count = min(n - start, count)
            if count > 0:
                ranges.append((start, start + count))
        return ranges
    return [(0, n)]  # threads split M; every call covers all columns


# ---------------------------------------------------------------------------------------------
# Conv (convolve.cpp)


def conv_algorithm(g: ConvGeometry) -> tuple[str, bool, int]:
    """(algorithm, trans_b, ldb) chosen by MlasConvPrepare (ldb only means something for GemmDirect)."""
    all_strides_one = g.stride == (1, 1)
    all_pads_zero = all(p == 0 for p in g.pads)
    if all_strides_one and all_pads_zero:
        if g.k == g.input_channels:
            return GEMM_DIRECT, False, g.output_size
        if g.dilation == (1, 1) and g.input_channels == 1:
            if g.kernel[1] == g.in_w:
                return GEMM_DIRECT, True, g.in_w
            if g.kernel[0] == g.in_h and g.kernel[1] == 1:
                return GEMM_DIRECT, False, g.in_w
    if g.filter_count > g.output_size:
        return EXPAND_THEN_GEMM, False, 0
    return SEGMENTED, False, 0


def segmented_thread_stride(g: ConvGeometry, threads: int) -> int:
    """ThreadStrideN computed by MlasConvPrepare for ExpandThenGemmSegmented."""
    complexity = g.filter_count * g.output_size * g.k
    if complexity < MLAS_SGEMM_THREAD_COMPLEXITY * MLAS_MAXIMUM_THREAD_COUNT:
        target = int(complexity / MLAS_SGEMM_THREAD_COMPLEXITY) + 1
    else:
        target = MLAS_MAXIMUM_THREAD_COUNT
    target = min(target, max(1, threads))
    stride_n = -(-g.output_size // target)
    if target > 1:
        a = MLAS_SGEMM_STRIDEN_THREAD_ALIGN
        stride_n = (stride_n + a - 1) & ~(a - 1)
    return stride_n


def _merge(ranges: Iterable[tuple[int, int, Signature]]) -> list[tuple[int, int, Signature]]:
    out: list[tuple[int, int, Signature]] = []
    for a, b, s in ranges:
        if a >= b:
            continue
        if out and out[-1][2] == s and out[-1][1] == a:
            out[-1] = (out[-1][0], b, s)
        else:
            out.append((a, b, s))
    return out


def conv_signatures(g: ConvGeometry, threads: int, target: str = "aarch64",
                    grouped_whole: bool = True) -> list[tuple[int, int, Signature]]:
    """For output pixel indices n in [0, out_h*out_w): compact (start, stop, Signature) ranges.

    The same ranges hold for every output channel and every group.  ``threads`` is the session's
    intra_op_num_threads.  ``grouped_whole``: grouped/batched segmented convs run each group whole
    (MlasConvExpandThenGemmSegmentedThreaded, recent sources); False models older sources, where
    each group was sliced across threads like a plain conv.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    algo, trans_b, ldb = conv_algorithm(g)
    n_total = g.output_size
    m, k = g.filter_count, g.k
    grouped = g.group > 1 or g.batch > 1

    if algo == GEMM_DIRECT:
        if grouped:
            calls = [(0, n_total)]
        else:
            calls = gemm_batch_column_ranges(m, n_total, k, threads)
        return _merge((a, b, sgemm_call_signature(m, b - a, k, target, trans_b, ldb, n_total))
                      for a, b in calls)

    if algo == EXPAND_THEN_GEMM:
        # N = OutputSize < M = FilterCount: MlasGemmBatch splits M, each call has all columns.
        return _merge([(0, n_total, sgemm_call_signature(m, n_total, k, target, False,
                                                         n_total, n_total))])

    # ExpandThenGemmSegmented
    if grouped and grouped_whole:
        segments = [(0, n_total)]
    else:
        stride = segmented_thread_stride(g, threads)
        if stride >= n_total:
            segments = [(0, n_total)]
        else:
            segments = [(s, min(s + stride, n_total)) for s in range(0, n_total, stride)]
    out = []
    for a, b in segments:
        seg_n = b - a
        kblock = min(sgemm_stride_k(seg_n, k), k)
        # Each K-block is one MlasSgemmOperation(M, CountN, CountK) call with ldb = CountN and
        # ldc = OutputSize: its kind is decided by M (M == 1) or OutputSize == 1 (N == 1 path).
        inner = sgemm_call_signature(m, 2, kblock, target)  # n=2: never the N == 1 path
        if n_total == 1:
            inner = sgemm_call_signature(m, 1, kblock, target, False, 1, 1)
        out.append((a, b, Signature(inner.kernel, kblock if inner.kblock else 0)))
    return _merge(out)


def signature_at(ranges: list[tuple[int, int, Signature]], n: int) -> Signature:
    for a, b, s in ranges:
        if a <= n < b:
            return s
    raise IndexError(n)


def may_use_kleidiai(g: ConvGeometry, beta: float = 0.0) -> bool:
    """Conservative: could an SME/KleidiAI override take this conv (convolve_kleidiai.cpp,
    dw_conv_kleidiai.cpp, sgemm_kleidiai.cpp)?  Necessary conditions only."""
    algo = conv_algorithm(g)[0]
    if algo in (GEMM_DIRECT, EXPAND_THEN_GEMM):
        return True  # MlasGemm -> MlasSGemmBatchOverride
    if g.batch != 1 or beta != 0.0:
        return False
    symmetric = len(set(g.pads)) == 1
    if g.group == 1:
        return symmetric
    dw = g.input_channels == 1 and g.filter_count == 1
    return dw and g.kernel == (3, 3) and g.stride == (1, 1) and g.dilation == (1, 1) and \
        g.pads in ((0, 0, 0, 0), (1, 1, 1, 1))


def strip_is_exact(g: ConvGeometry, out_rows: tuple[int, int], strip_pads: tuple[int, int],
                   strip_in_rows: int, threads_unsplit: int, threads_strip: int,
                   target: str = "aarch64", has_sme: bool = False, beta: float = 0.0,
                   grouped_whole: bool = True) -> bool:
    """True iff every element of the strip's output rows [a, b) is computed exactly as in the
    unsplit conv ``g`` (same kernel kind, same K-blocks) on target ``target``.

    strip_pads: the strip conv's (top, bottom) pads; strip_in_rows: its number of input rows.
    """
    a, b = out_rows
    if not 0 <= a < b <= g.out_h:
        raise ValueError("bad strip rows")
    s = g.strip(strip_in_rows, strip_pads[0], strip_pads[1], b - a)
    if s.out_h != b - a:
        raise ValueError(f"strip conv yields {s.out_h} rows, not {b - a}")
    if target == "aarch64" and has_sme and (may_use_kleidiai(g, beta) or may_use_kleidiai(s, beta)):
        return False  # KleidiAI routing not modelled: assume inexact
    full = conv_signatures(g, threads_unsplit, target, grouped_whole)
    part = conv_signatures(s, threads_strip, target, grouped_whole)
    w = g.out_w
    offset = a * w
    # Walk both range lists over the strip's pixels [0, (b-a)*w) <-> [offset, offset + ...).
    i = j = 0
    n = 0
    end = (b - a) * w
    while n < end:
        while part[i][1] <= n:
            i += 1
        while full[j][1] <= n + offset:
            j += 1
        if part[i][2] != full[j][2]:
            return False
        n = min(part[i][1], full[j][1] - offset)
    return True
