/**
 * The device context: one per process. Owns the adapter, the device, a pipeline cache, a buffer pool,
 * a uniform arena and the command encoder that kernels are recorded into.
 *
 * Kernels are recorded into one open compute pass; nothing reaches the GPU until {@link Gpu.submit},
 * and the CPU waits only in {@link Gpu.read} / {@link Gpu.sync} (a sync right after a read does not
 * wait again). Uniform parameters of every dispatch in a batch go into one buffer written once at
 * submit, and a dispatch that binds what an earlier one bound reuses its bind group, so a recorded
 * step that repeats (a decode token, a training step) creates next to nothing.
 * @module
 */
import { packF16, unpackF16 } from "@lvm/util";
import { byteSize, type DType, type HostArray, numel, Tensor } from "./tensor.ts";

/** A WebGPU problem: no adapter, a lost device, a shader that does not compile. */
export class GpuError extends Error {
  override name = "GpuError";
}

/** What {@link Gpu.create} needs of `navigator.gpu` (a stand-in may be passed, e.g. in tests). */
export interface AdapterSource {
  requestAdapter(options?: GPURequestAdapterOptions): Promise<GPUAdapter | null>;
}

/** Kernel family to prefer: CPU rasterizers (llvmpipe/lavapipe) and real GPUs want different shapes. */
export type AdapterKind = "cpu" | "gpu";

/**
 * The environment variable that forces the kernel family for a whole process:
 * `LVM_KERNEL_KIND=cpu` (texture-fed register tiles, what lavapipe runs fastest) or `gpu`
 * (shared-memory tiles, for real GPUs). {@link GpuOptions.kind} takes precedence.
 */
export const KERNEL_KIND_ENV = "LVM_KERNEL_KIND";

/** `value` checked as an {@link AdapterKind}; anything else is a TypeError naming `source`. */
export function parseKernelKind(value: unknown, source: string): AdapterKind {
  if (value === "cpu" || value === "gpu") return value;
  throw new TypeError(
    `${source} must be "cpu" (texture-fed tiles, for CPU rasterizers such as lavapipe) or "gpu" ` +
      `(shared-memory tiles, for real GPUs), got ${JSON.stringify(value)}`,
  );
}

/**
 * The kernel family forced by {@link KERNEL_KIND_ENV}, or undefined when it is unset (or where
 * there is no environment: a browser). A bad value is a TypeError.
 */
export function kernelKindFromEnv(): AdapterKind | undefined {
  // Feature-detected, so this module loads in a browser (no Deno global there).
  const env = (globalThis as { Deno?: { env?: { get(k: string): string | undefined } } }).Deno
    ?.env;
  let v: string | undefined;
  try {
    v = env?.get(KERNEL_KIND_ENV);
  } catch {
    return undefined; // no --allow-env: as if unset
  }
  return v === undefined || v === "" ? undefined : parseKernelKind(v, KERNEL_KIND_ENV);
}

/** Options for {@link Gpu.create}. */
export interface GpuOptions {
  powerPreference?: GPUPowerPreference;
  /**
   * Force the kernel family: "cpu" (texture-fed register tiles) or "gpu" (shared-memory tiles).
   * Default: the {@link KERNEL_KIND_ENV} environment variable, else detected from the adapter.
   */
  kind?: AdapterKind;
  /** Where adapters come from (default `navigator.gpu`). */
  gpu?: AdapterSource;
  /** Wait before the second adapter request when the first answers null, in ms (default 200). */
  retryDelayMs?: number;
  /**
   * On a CPU adapter (lavapipe), run the installed {@link ThreadPinner} (Deno on Linux: importing
   * `@lvm/gpu/pin` installs one that pins the driver's compute threads one per core). Default true;
   * ignored on GPUs. What was done is {@link Gpu.pinning}.
   */
  pinThreads?: boolean;
}

/** How a CPU adapter's compute threads were placed (see `@lvm/gpu/pin`). */
export interface ThreadPinning {
  /** Worker threads pinned (0 when none was). */
  pinned: number;
  /** The core each was pinned to, in the order the threads were found. */
  cpus: number[];
  /** The pinned threads' ids (Linux TIDs), in the same order. */
  threads: number[];
  /** Why nothing was pinned, when nothing was. */
  skipped?: string;
}

/** A {@link ThreadPinning} that pinned nothing, for `reason`. */
export function notPinned(reason: string): ThreadPinning {
  return { pinned: 0, cpus: [], threads: [], skipped: reason };
}

/**
 * Places a CPU adapter's compute threads once its device exists, given `calibrate`: work for those
 * threads, awaited until done. The runtime-specific part (threads, affinity) lives outside this
 * browser-ready module: `@lvm/gpu/pin` installs one for Deno on Linux.
 */
export type ThreadPinner = (calibrate: () => Promise<void>) => Promise<ThreadPinning>;

let threadPinner: ThreadPinner | null = null;

/** Installs (or, with null, removes) the {@link ThreadPinner} that contexts created from now on run. */
export function setThreadPinner(pinner: ThreadPinner | null): void {
  threadPinner = pinner;
}

/** Whether an adapter runs on the CPU (lavapipe, llvmpipe, SwiftShader, a fallback adapter). */
export function isSoftwareAdapter(info: GPUAdapterInfo): boolean {
  return info.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader|software/i.test(
    `${info.description} ${info.device} ${info.architecture}`,
  );
}

/** A spin loop per invocation: the work a {@link ThreadPinner} calibrates with (its result is stored). */
const CALIBRATE_WGSL = `@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  var x = f32(id.x);
  for (var i = 0u; i < 60000u; i++) { x = x * 0.999999 + 0.5; }
  out[id.x] = x;
}`;

const NO_ADAPTER_HELP =
  "No WebGPU adapter found. Install a GPU driver (Vulkan, Metal or DX12), or on a machine without a GPU " +
  "install Mesa's software Vulkan driver (Debian/Ubuntu: `apt-get install -y mesa-vulkan-drivers libvulkan1`) " +
  "and set DENO_WEBGPU_BACKEND=vulkan.";

/**
 * Asks `source` for an adapter, once more after `retryDelayMs` if the first answer is null (lavapipe
 * sometimes answers null right after install). Throws a {@link GpuError} saying how to get one.
 */
export async function requestAdapter(
  source: AdapterSource,
  options: GPURequestAdapterOptions = {},
  retryDelayMs = 200,
): Promise<GPUAdapter> {
  let adapter: GPUAdapter | null = null;
  for (let attempt = 0; attempt < 2 && !adapter; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, retryDelayMs));
    try {
      adapter = await source.requestAdapter(options);
    } catch (e) {
      throw new GpuError(`requestAdapter failed: ${(e as Error).message}. ${NO_ADAPTER_HELP}`, {
        cause: e,
      });
    }
  }
  if (!adapter) throw new GpuError(`${NO_ADAPTER_HELP} (requestAdapter answered null twice)`);
  return adapter;
}

/** Size bucket of the pool: powers of two up to 1 MiB, then multiples of 1 MiB. */
function bucket(bytes: number): number {
  const b = Math.max(bytes, 16);
  if (b <= 1 << 20) return 2 ** Math.ceil(Math.log2(b));
  return Math.ceil(b / (1 << 20)) * (1 << 20);
}

/** Storage buffers reused by size bucket. */
export class BufferPool {
  #free = new Map<number, GPUBuffer[]>();
  /** Every buffer in `#free`, so a buffer put twice is not handed out twice. */
  #isFree = new Set<GPUBuffer>();
  /** Bytes currently allocated through the pool (in use or free). */
  allocatedBytes = 0;
  /** `onTrim` runs after {@link trim} destroyed buffers (the context drops its cached bind groups). */
  constructor(
    private device: GPUDevice,
    private usage: GPUBufferUsageFlags,
    private onTrim?: () => void,
  ) {}

  /** A buffer of at least `bytes` bytes. */
  take(bytes: number): GPUBuffer {
    const size = bucket(bytes);
    const list = this.#free.get(size);
    if (list && list.length) {
      const b = list.pop()!;
      this.#isFree.delete(b);
      return b;
    }
    this.allocatedBytes += size;
    return this.device.createBuffer({ size, usage: this.usage });
  }

  /** Returns a buffer for reuse (putting a buffer that is already free does nothing). */
  put(buffer: GPUBuffer): void {
    if (this.#isFree.has(buffer)) return;
    this.#isFree.add(buffer);
    const list = this.#free.get(buffer.size);
    if (list) list.push(buffer);
    else this.#free.set(buffer.size, [buffer]);
  }

  /** Destroys every free buffer. */
  trim(): void {
    for (const list of this.#free.values()) {
      for (const b of list) {
        this.allocatedBytes -= b.size;
        b.destroy();
      }
    }
    this.#free.clear();
    this.#isFree.clear();
    this.onTrim?.();
  }

  /** Number of buffers waiting for reuse. */
  get freeCount(): number {
    return this.#isFree.size;
  }
}

/** Builds the bytes of a uniform parameter block: `new Params().u32(M).f32(eps).bytes`. */
export class Params {
  #view = new DataView(new ArrayBuffer(256));
  #n = 0;
  u32(v: number): this {
    this.#view.setUint32(this.#n, v >>> 0, true);
    this.#n += 4;
    return this;
  }
  i32(v: number): this {
    this.#view.setInt32(this.#n, v | 0, true);
    this.#n += 4;
    return this;
  }
  f32(v: number): this {
    this.#view.setFloat32(this.#n, v, true);
    this.#n += 4;
    return this;
  }
  /** The block, padded to 16 bytes as uniform structs are. */
  get bytes(): Uint8Array {
    return new Uint8Array(this.#view.buffer, 0, Math.max(16, Math.ceil(this.#n / 16) * 16));
  }
}

const ARENA_BYTES = 64 * 1024;
/** Timestamp queries per query set while profiling (two per dispatch). */
const PROFILE_QUERIES = 4096;

/** GPU time of one kernel over a profile (see {@link Gpu.startProfile}). */
export interface KernelTime {
  /** The pipeline's key (its label): op name and specialisation, e.g. `softmax|wg`. */
  kernel: string;
  /** Dispatches of it recorded while profiling. */
  dispatches: number;
  /** Their summed GPU time, milliseconds (each dispatch timed in its own pass). */
  ms: number;
}

/** What a profile holds: the open query set and the resolved ones waiting to be read. */
interface Profile {
  set: GPUQuerySet | null;
  labels: string[];
  pending: { set: GPUQuerySet; labels: string[]; resolve: GPUBuffer; read: GPUBuffer }[];
}

/** Most bind groups {@link Gpu} keeps for reuse before it starts afresh. */
const BIND_CACHE_MAX = 4096;

const ids = new WeakMap<object, number>();
let nextId = 1;
/** A number for an object, the same for its lifetime and never given to another object. */
function objectId(o: object): number {
  let id = ids.get(o);
  if (id === undefined) ids.set(o, id = nextId++);
  return id;
}

/** Workgroup counts for `n` workgroups laid over x then y (each at most 65535). Pair with {@link WG_INDEX}. */
export function grid(n: number, maxPerDim = 65535): [number, number, number] {
  if (n <= maxPerDim) return [Math.max(n, 1), 1, 1];
  const y = Math.ceil(n / maxPerDim);
  return [Math.ceil(n / y), y, 1];
}

/** WGSL expression for the linear workgroup index under {@link grid} (needs `wg` and `nwg` builtins). */
export const WG_INDEX = "(wg.x + wg.y * nwg.x)";

/** What a dispatch binds: tensors or raw buffers, in binding order 0..n-1; params go last. */
export type Binding = Tensor | GPUBuffer;

/** The process's WebGPU context. */
export class Gpu {
  readonly pool: BufferPool;
  readonly features: ReadonlySet<string>;
  /** Whether WGSL `enable f16;` may be used. */
  readonly hasF16: boolean;
  /** Kernel family for this adapter. */
  readonly kind: AdapterKind;
  /** Whether the adapter runs on the CPU ({@link isSoftwareAdapter}). */
  readonly software: boolean;
  /** How the CPU adapter's compute threads were placed ({@link GpuOptions.pinThreads}). */
  pinning: ThreadPinning = notPinned("not a CPU adapter");
  #pipelines = new Map<string, GPUComputePipeline>();
  #bindGroups = new Map<string, GPUBindGroup>();
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #arenas: GPUBuffer[] = [];
  #arenaIndex = 0;
  #arenaOffset = 0;
  #arenaHost = new Uint8Array(ARENA_BYTES);
  #arenaDirty: { buffer: GPUBuffer; bytes: Uint8Array }[] = [];
  #staging: BufferPool;
  #errors: Promise<GPUError | null>[] = [];
  #lost: GPUDeviceLostInfo | null = null;
  #destroyed = false;
  #uncaptured: GpuError | null = null;
  #lostPromise: Promise<never>;
  #profile: Profile | null = null;
  /** Dispatches recorded since the context was made (for tests that count work). */
  dispatchCount = 0;
  /** Bind groups created since the context was made (dispatches that reused one add nothing). */
  bindGroupCount = 0;
  /** GPU->CPU reads since the context was made. */
  readCount = 0;
  /** Command buffers sent to the queue since the context was made (one per {@link submit} with work). */
  submitCount = 0;
  /**
   * Host uploads (`write`, `writeBytes`) are sent to the queue once this many bytes are pending.
   * Each `queue.writeBuffer` keeps a staging copy of its data until the copy into the buffer runs at
   * the next submit; a model uploaded with no submit in between (a checkpoint load) would otherwise
   * hold two copies of its weights at once (the 7B at 16 bits: 2 x 13 GB).
   */
  stagingLimit = 64 * 2 ** 20;
  /** Times pending uploads were sent because they passed {@link stagingLimit}. */
  stagingFlushes = 0;
  /**
   * Recorded work is sent to the queue every this many dispatches (0: only at {@link submit} and
   * the reads and waits that submit), so that a real GPU runs the first kernels of a long step
   * (a training step records ~1200-1500) while the CPU records the rest. Measured on an H200: a
   * `100m` train step's wall time (141 ms) was its recording plus its GPU time (69 ms), the GPU
   * idle until one submit at the end; with 64, 67-69 ms against 75-88 ms with one submit (`deno
   * task bench --filter "100m B1 T256" --reps 5`: `transformer train step[one submit]`). Default
   * 64 on the "gpu" kernel kind; 0 on the "cpu" kind: lavapipe runs submitted work on worker
   * threads that share the machine's cores with the recording thread (a submit returns at once),
   * so overlap adds no compute there: the tiny transformer train step B4 T256 took 462 ms with 0
   * and 458 ms with 64 (best of 5, alternating in one process, 2 cores; a one-off script, not a
   * bench case: the bench's `[one submit]` A/B runs on the gpu kind only).
   * Order is kept: submits run in order and {@link write} submits first. Off while profiling.
   */
  submitEvery = 0;
  #sinceSubmit = 0;
  #staged = 0;
  #unsettled = false;
  /** Queue operations (submits, buffer writes) sent so far, and how many of them are known done. */
  #queued = 0;
  #done = 0;

  private constructor(
    readonly adapter: GPUAdapter,
    readonly device: GPUDevice,
    readonly info: GPUAdapterInfo,
    kind?: AdapterKind,
  ) {
    this.features = new Set(device.features as unknown as Iterable<string>);
    this.hasF16 = this.features.has("shader-f16");
    this.software = isSoftwareAdapter(info);
    this.kind = kind ?? (this.software ? "cpu" : "gpu");
    this.submitEvery = this.kind === "gpu" ? 64 : 0;
    this.pool = new BufferPool(
      device,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      () => this.#bindGroups.clear(),
    );
    this.#staging = new BufferPool(device, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    this.#lostPromise = device.lost.then((lost) => {
      this.#lost = lost;
      throw this.#lostError();
    });
    this.#lostPromise.catch(() => {});
    // Validation errors of dispatches (e.g. a buffer bound twice, once writable) would otherwise only
    // be logged; keep the first and throw it at the next read/sync.
    device.addEventListener("uncapturederror", (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      this.#uncaptured ??= new GpuError(`WebGPU error: ${e.message}`);
    });
  }

  /** Opens the adapter (retrying once: lavapipe sometimes answers null right after install). */
  static async create(options: GpuOptions = {}): Promise<Gpu> {
    const kind = options.kind === undefined
      ? kernelKindFromEnv()
      : parseKernelKind(options.kind, "GpuOptions.kind");
    let source = options.gpu;
    if (!source) {
      if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
        throw new GpuError(`This runtime has no navigator.gpu. ${NO_ADAPTER_HELP}`);
      }
      source = navigator.gpu;
    }
    const adapter = await requestAdapter(
      source,
      { powerPreference: options.powerPreference },
      options.retryDelayMs,
    );
    const want: (keyof GPUSupportedLimits)[] = [
      "maxStorageBuffersPerShaderStage",
      "maxStorageBufferBindingSize",
      "maxBufferSize",
      "maxComputeWorkgroupStorageSize",
      "maxComputeInvocationsPerWorkgroup",
      "maxComputeWorkgroupSizeX",
      "maxComputeWorkgroupSizeY",
      "maxComputeWorkgroupSizeZ",
      "maxComputeWorkgroupsPerDimension",
      "maxBindGroups",
      "maxUniformBuffersPerShaderStage",
      "maxSampledTexturesPerShaderStage",
      "maxStorageTexturesPerShaderStage",
      "maxTextureDimension2D",
    ];
    const requiredLimits: Record<string, number> = {};
    for (const k of want) {
      const v = adapter.limits[k];
      if (typeof v === "number") requiredLimits[k] = v;
    }
    const requiredFeatures = (["shader-f16", "timestamp-query"] as GPUFeatureName[]).filter((f) =>
      adapter!.features.has(f)
    );
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
    } catch (e) {
      const name = adapter.info?.description || adapter.info?.vendor || "the WebGPU adapter";
      throw new GpuError(
        `requestDevice on ${name} failed (features [${requiredFeatures}], the adapter's own limits): ` +
          `${(e as Error).message}`,
        { cause: e },
      );
    }
    const gpu = new Gpu(adapter, device, adapter.info, kind);
    if (gpu.software) {
      if (options.pinThreads === false) gpu.pinning = notPinned("pinThreads: false");
      else if (!threadPinner) {
        gpu.pinning = notPinned("no thread pinner installed (Deno: import @lvm/gpu/pin)");
      } else {
        const work = gpu.#calibration();
        try {
          gpu.pinning = await threadPinner(work.run);
        } finally {
          work.out.release();
        }
      }
    }
    return gpu;
  }

  /**
   * Work for every compute thread of a CPU adapter: `run` dispatches {@link CALIBRATE_WGSL} over 4
   * workgroups per core and waits for it; `out` is its buffer, to release after the last run.
   */
  #calibration(): { run: () => Promise<void>; out: Tensor } {
    const cores = typeof navigator !== "undefined" ? navigator.hardwareConcurrency || 2 : 2;
    const groups = 4 * cores;
    const out = this.empty([groups * 64]);
    const pipeline = this.pipeline("gpu calibrate", CALIBRATE_WGSL);
    const run = async () => {
      this.dispatch(pipeline, [out], null, groups);
      await this.sync();
    };
    return { run, out };
  }

  /**
   * Whether the device is gone (lost, or {@link destroy}ed): its tensors are invalid and reads fail;
   * {@link getGpu} then makes a fresh context.
   */
  get lost(): boolean {
    return this.#destroyed || this.#lost !== null;
  }

  #lostError(): GpuError {
    if (this.#destroyed && (!this.#lost || this.#lost.reason === "destroyed")) {
      return new GpuError(
        "this WebGPU context was destroyed (Gpu.destroy()); its tensors are gone: " +
          "make a new context (getGpu() or Gpu.create())",
      );
    }
    const l = this.#lost;
    return new GpuError(
      `WebGPU device lost (${l?.reason ?? "unknown"}): ${l?.message || "no message"}; ` +
        "its tensors are gone: make a new context (getGpu() does so after a loss)",
    );
  }

  #checkLive() {
    if (this.lost) throw this.#lostError();
  }

  /** Device limits as granted. */
  get limits(): GPUSupportedLimits {
    return this.device.limits;
  }

  /** One line naming the adapter, for logs and benchmarks. */
  describe(): string {
    const i = this.info;
    const name = i.description || [i.vendor, i.architecture, i.device].filter(Boolean).join(" ");
    return `${name} (${this.kind} kernels, f16 ${this.hasF16 ? "yes" : "no"})`;
  }

  /** A compute pipeline, compiled once per key. Compile errors surface at the next read/sync. */
  pipeline(key: string, code: string | (() => string), entryPoint = "main"): GPUComputePipeline {
    let p = this.#pipelines.get(key);
    if (p) return p;
    const src = typeof code === "string" ? code : code();
    this.device.pushErrorScope("validation");
    const module = this.device.createShaderModule({ label: key, code: src });
    p = this.device.createComputePipeline({
      label: key,
      layout: "auto",
      compute: { module, entryPoint },
    });
    const scope = this.device.popErrorScope();
    this.#errors.push(
      scope.then((e) => (e ? new GPUValidationError(`kernel ${key}: ${e.message}`) : null)),
    );
    this.#pipelines.set(key, p);
    return p;
  }

  /** Number of compiled pipelines (a decode step must not add any). */
  get pipelineCount(): number {
    return this.#pipelines.size;
  }

  /** A tensor with uninitialised contents, from the pool. */
  empty(shape: readonly number[], dtype: DType = "f32"): Tensor {
    const bytes = byteSize(numel(shape), dtype);
    this.#checkBinding(bytes, shape, dtype);
    return new Tensor(this, this.pool.take(bytes), [...shape], dtype);
  }

  /** A tensor filled with zeros. */
  zeros(shape: readonly number[], dtype: DType = "f32"): Tensor {
    const t = this.empty(shape, dtype);
    this.#endPass();
    this.#enc().clearBuffer(t.buffer, 0, Math.ceil(t.byteLength / 4) * 4);
    return t;
  }

  /** Uploads host data (f16: floats are rounded and packed). */
  upload(data: ArrayLike<number>, shape: readonly number[], dtype: DType = "f32"): Tensor {
    const n = numel(shape);
    if (data.length !== n) {
      throw new RangeError(`upload: shape [${shape}] needs ${n} values, got ${data.length}`);
    }
    const t = this.empty(shape, dtype);
    this.write(t, data);
    return t;
  }

  /** Overwrites a tensor's contents from the host. Ordered before work submitted after it. */
  write(t: Tensor, data: ArrayLike<number>): void {
    if (data.length !== t.size) {
      throw new RangeError(
        `write: tensor [${t.shape}] ${t.dtype} holds ${t.size} values, got ${data.length}`,
      );
    }
    let bytes: ArrayBufferView;
    if (t.dtype === "f16") bytes = packF16(data);
    else if (t.dtype === "f32") {
      bytes = data instanceof Float32Array ? data : Float32Array.from(data);
    } else if (t.dtype === "i32") bytes = data instanceof Int32Array ? data : Int32Array.from(data);
    else bytes = data instanceof Uint32Array ? data : Uint32Array.from(data);
    if (bytes.byteLength === 0) return; // nothing to write (Deno 2.9 panics on an empty writeBuffer)
    // Work recorded before this write must run before it: submit it first.
    this.submit();
    this.#writeQueue(t.buffer, 0, bytes);
    this.#countStaged(bytes.byteLength);
  }

  /** Queues a buffer write (counted for {@link sync}: see #queued). */
  #writeQueue(buffer: GPUBuffer, offset: number, bytes: ArrayBufferView): void {
    this.device.queue.writeBuffer(buffer, offset, bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#queued++;
  }

  /** Counts staged upload bytes; past {@link stagingLimit} sends them (an empty submit). */
  #countStaged(bytes: number): void {
    this.#staged += bytes;
    if (this.#staged < this.stagingLimit) return;
    this.device.queue.submit([]);
    this.#queued++;
    this.#staged = 0;
    this.stagingFlushes++;
    this.#unsettled = true;
  }

  /**
   * Waits until uploads sent so far have landed, so that their staging memory is freed, when any
   * were sent since the last call (otherwise returns at once). Loaders that upload tensor by
   * tensor call it after each one: host memory then stays near one copy of the weights.
   */
  async settle(): Promise<void> {
    if (!this.#unsettled) return;
    this.#unsettled = false;
    await this.#wait(this.device.queue.onSubmittedWorkDone(), "upload");
  }

  /** Writes raw bytes (already in the tensor's storage format) at a byte offset. */
  writeBytes(t: Tensor | GPUBuffer, bytes: ArrayBufferView, offset = 0): void {
    const buf = t instanceof Tensor ? t.buffer : t;
    const cap = t instanceof Tensor ? t.byteLength : buf.size;
    if (!Number.isInteger(offset) || offset < 0 || offset + bytes.byteLength > cap) {
      throw new RangeError(
        `writeBytes: ${bytes.byteLength} bytes at offset ${offset} do not fit in ${
          t instanceof Tensor ? `tensor [${t.shape}] ${t.dtype}` : "the buffer"
        } of ${cap} bytes`,
      );
    }
    this.submit();
    this.#writeQueue(buf, offset, bytes);
    this.#countStaged(bytes.byteLength);
  }

  #checkBinding(bytes: number, shape: readonly number[], dtype: DType) {
    const max = this.limits.maxStorageBufferBindingSize;
    if (bytes > max) {
      throw new RangeError(
        `Tensor [${shape}] ${dtype} needs ${bytes} bytes, over this adapter's ${max}-byte binding limit; split it`,
      );
    }
  }

  #enc(): GPUCommandEncoder {
    return this.#encoder ??= this.device.createCommandEncoder();
  }

  #endPass() {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  #uniform(bytes: Uint8Array): GPUBufferBinding {
    const align = Math.max(256, this.limits.minUniformBufferOffsetAlignment);
    if (this.#arenaOffset + bytes.length > ARENA_BYTES) this.#flushArena(true);
    if (this.#arenaIndex === this.#arenas.length) {
      this.#arenas.push(
        this.device.createBuffer({
          size: ARENA_BYTES,
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        }),
      );
    }
    const offset = this.#arenaOffset;
    this.#arenaHost.set(bytes, offset);
    this.#arenaOffset += Math.ceil(bytes.length / align) * align;
    return { buffer: this.#arenas[this.#arenaIndex], offset, size: bytes.length };
  }

  /** Queues the used part of the current arena for upload; `advance` moves on to a fresh arena. */
  #flushArena(advance: boolean) {
    if (this.#arenaOffset > 0) {
      this.#arenaDirty.push({
        buffer: this.#arenas[this.#arenaIndex],
        bytes: this.#arenaHost.slice(0, this.#arenaOffset),
      });
    }
    if (advance) {
      this.#arenaIndex++;
      this.#arenaOffset = 0;
    }
  }

  /**
   * The bind group of a dispatch, reused when the same pipeline binds the same resources again
   * (creating one costs ~20 us of CPU on lavapipe: ~2.5 ms of a 100m decode step's 112 dispatches,
   * which a decode step repeats with the same weights, cache and pooled buffers; the uniform's
   * arena offset repeats too, as the arena restarts at each submit). Keys are object ids, never
   * reused, so a destroyed resource's entries are simply never hit again; the cache is emptied
   * when it passes {@link BIND_CACHE_MAX} entries and when the pool destroys buffers
   * ({@link BufferPool.trim}), so it keeps no freed buffer alive for long.
   */
  #bindGroup(
    pipeline: GPUComputePipeline,
    resources: (GPUBuffer | GPUTextureView)[],
    uniform: GPUBufferBinding | null,
  ): GPUBindGroup {
    let key = String(objectId(pipeline));
    for (const r of resources) key += "," + objectId(r);
    if (uniform) key += `|${objectId(uniform.buffer)}@${uniform.offset}+${uniform.size}`;
    const hit = this.#bindGroups.get(key);
    if (hit) return hit;
    const entries: GPUBindGroupEntry[] = resources.map((r, i) => ({
      binding: i,
      resource: r instanceof GPUTextureView ? r : { buffer: r },
    }));
    if (uniform) entries.push({ binding: resources.length, resource: uniform });
    const group = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    this.bindGroupCount++;
    if (this.#bindGroups.size >= BIND_CACHE_MAX) this.#bindGroups.clear();
    this.#bindGroups.set(key, group);
    return group;
  }

  /**
   * Records one dispatch. Bindings 0..n-1 are the storage buffers (or texture views) in order; if
   * `params` is given it is bound as a uniform at binding n. Nothing runs until {@link submit}.
   */
  dispatch(
    pipeline: GPUComputePipeline,
    bindings: readonly (Binding | GPUTextureView)[],
    params: Params | Uint8Array | null,
    workgroups: number | readonly [number, number?, number?],
  ): void {
    const resources = bindings.map((b) =>
      // A texture view (sampled or storage texture) binds as itself.
      b instanceof GPUTextureView ? b : b instanceof Tensor ? b.buffer : b
    );
    const uniform = params ? this.#uniform(params instanceof Params ? params.bytes : params) : null;
    const group = this.#bindGroup(pipeline, resources, uniform);
    const [x, y = 1, z = 1] = typeof workgroups === "number" ? [workgroups] : workgroups;
    const max = this.limits.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new RangeError(
        `dispatch of ${pipeline.label}: [${x},${y},${z}] workgroups exceeds ${max}`,
      );
    }
    if (x === 0 || y === 0 || z === 0) return;
    // Profiling: each dispatch in its own pass, timestamped at the pass's start and end.
    const pass = this.#profile
      ? this.#profiledPass(this.#profile, pipeline.label)
      : (this.#pass ??= this.#enc().beginComputePass());
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    if (this.#profile) pass.end();
    this.dispatchCount++;
    if (this.submitEvery > 0 && !this.#profile && ++this.#sinceSubmit >= this.submitEvery) {
      this.submit();
    }
  }

  /** Records a buffer copy. */
  copy(src: Binding, dst: Binding, bytes?: number, srcOffset = 0, dstOffset = 0): void {
    const s = src instanceof Tensor ? src.buffer : src;
    const d = dst instanceof Tensor ? dst.buffer : dst;
    const n = bytes ?? (src instanceof Tensor ? Math.ceil(src.byteLength / 4) * 4 : s.size);
    this.#endPass();
    this.#enc().copyBufferToBuffer(s, srcOffset, d, dstOffset, n);
  }

  /**
   * Records a buffer-to-texture copy, ordered with the dispatches around it. `layout` is WebGPU's
   * buffer layout (byte `offset`; `bytesPerRow`, a multiple of 256, when more than one row).
   */
  copyToTexture(
    src: Binding,
    layout: { offset?: number; bytesPerRow?: number; rowsPerImage?: number },
    dst: { texture: GPUTexture; origin?: GPUOrigin3D },
    size: GPUExtent3D,
  ): void {
    const buffer = src instanceof Tensor ? src.buffer : src;
    this.#endPass();
    this.#enc().copyBufferToTexture({ buffer, ...layout }, dst, size);
  }

  /**
   * Starts timing every dispatch on the GPU (timestamp queries; the device must have the
   * "timestamp-query" feature): until {@link stopProfile}, each dispatch runs in its own compute
   * pass with a timestamp at its start and end. Passes cost a little, so a profiled run is somewhat
   * slower than an unprofiled one; what it gives is where the GPU time goes, kernel by kernel.
   * On Mesa's lavapipe (22.3) the timestamps can miss most of a dispatch's time: `deno task bench
   * --filter "gpu-sampled 100m prompt16 +16 greedy" --profile 5` there ran ~750 ms while its
   * dispatches' timestamps summed to ~160 ms, where the lvm VQGAN encode's summed to ~95% of its
   * run. Trust it on real GPUs; on lavapipe, time a kernel alone before acting on its share.
   */
  startProfile(): void {
    this.#checkLive();
    if (!this.features.has("timestamp-query")) {
      throw new GpuError(
        `profiling needs the WebGPU feature "timestamp-query", which ${this.describe()} lacks`,
      );
    }
    if (this.#profile) throw new GpuError("startProfile: a profile is already running");
    this.#endPass(); // work recorded before the start stays unprofiled
    this.#profile = { set: null, labels: [], pending: [] };
  }

  /** Whether a profile is running ({@link startProfile}). */
  get profiling(): boolean {
    return this.#profile !== null;
  }

  /**
   * Ends the profile: waits for the GPU, then returns each kernel's dispatches and summed GPU time,
   * the slowest first.
   */
  async stopProfile(): Promise<KernelTime[]> {
    const prof = this.#profile;
    if (!prof) throw new GpuError("stopProfile: no profile is running (call startProfile first)");
    this.#profile = null;
    if (prof.labels.length) this.#profileResolve(prof);
    this.submit();
    const upTo = this.#queued;
    try {
      await this.#wait(
        Promise.all(prof.pending.map((p) => p.read.mapAsync(GPUMapMode.READ))),
        "profile read",
      );
      if (prof.pending.length) this.#done = Math.max(this.#done, upTo);
      await this.#checkErrors();
      const byKernel = new Map<string, KernelTime>();
      for (const p of prof.pending) {
        const t = new BigUint64Array(p.read.getMappedRange().slice(0));
        p.read.unmap();
        p.labels.forEach((kernel, i) => {
          const ns = t[2 * i + 1] > t[2 * i] ? Number(t[2 * i + 1] - t[2 * i]) : 0;
          const k = byKernel.get(kernel) ?? { kernel, dispatches: 0, ms: 0 };
          k.dispatches++;
          k.ms += ns / 1e6;
          byKernel.set(kernel, k);
        });
      }
      return [...byKernel.values()].sort((a, b) => b.ms - a.ms);
    } finally {
      for (const p of prof.pending) {
        p.set.destroy();
        p.resolve.destroy();
        p.read.destroy();
      }
    }
  }

  /**
   * A pass of its own for the next profiled dispatch, timestamped into the next query pair (a full
   * query set is resolved and a new one made).
   */
  #profiledPass(prof: Profile, label: string): GPUComputePassEncoder {
    this.#endPass();
    if (prof.set && 2 * (prof.labels.length + 1) > PROFILE_QUERIES) this.#profileResolve(prof);
    prof.set ??= this.device.createQuerySet({ type: "timestamp", count: PROFILE_QUERIES });
    const index = 2 * prof.labels.length;
    prof.labels.push(label);
    return this.#enc().beginComputePass({
      timestampWrites: {
        querySet: prof.set,
        beginningOfPassWriteIndex: index,
        endOfPassWriteIndex: index + 1,
      },
    });
  }

  /** Records the open query set's resolve and copy into a mappable buffer. */
  #profileResolve(prof: Profile) {
    const set = prof.set!, n = 2 * prof.labels.length;
    this.#endPass();
    const enc = this.#enc();
    const resolve = this.device.createBuffer({
      size: n * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const read = this.device.createBuffer({
      size: n * 8,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    enc.resolveQuerySet(set, 0, n, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, n * 8);
    prof.pending.push({ set, labels: prof.labels, resolve, read });
    prof.set = null;
    prof.labels = [];
  }

  /** Sends everything recorded so far to the GPU (no wait). */
  submit(): void {
    this.#sinceSubmit = 0;
    this.#endPass();
    this.#flushArena(false);
    for (const { buffer, bytes } of this.#arenaDirty) {
      this.#writeQueue(buffer, 0, bytes);
    }
    this.#arenaDirty = [];
    this.#arenaIndex = 0;
    this.#arenaOffset = 0;
    if (this.#encoder) {
      this.device.queue.submit([this.#encoder.finish()]);
      this.#encoder = null;
      this.submitCount++;
      this.#queued++;
    }
  }

  /** Waits for `p` or the device's loss; a failure becomes a GpuError (the loss's, if lost). */
  async #wait(p: Promise<unknown>, what: string): Promise<void> {
    try {
      await Promise.race([p, this.#lostPromise]);
    } catch (e) {
      if (this.lost) throw this.#lostError();
      if (e instanceof GpuError) throw e;
      throw new GpuError(`${what} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  async #checkErrors() {
    this.#checkLive();
    if (this.#uncaptured) {
      const e = this.#uncaptured;
      this.#uncaptured = null;
      throw e;
    }
    if (!this.#errors.length) return;
    const errs = await Promise.all(this.#errors);
    this.#errors = [];
    const e = errs.find((x) => x);
    if (e) throw new GpuError(e.message);
  }

  /**
   * Submits and waits until the GPU is idle: until everything sent to the queue through this
   * context (dispatches, copies, writes) has run. Returns without waiting when nothing was sent
   * since the last completed read or sync.
   */
  async sync(): Promise<void> {
    this.#checkLive();
    this.submit();
    // Nothing sent since a read or sync completed: the GPU is idle already, and Deno's wait costs
    // ~11 ms even then (its device polling), so a sync after a read does not wait again.
    if (this.#queued !== this.#done) {
      const upTo = this.#queued;
      await this.#wait(this.device.queue.onSubmittedWorkDone(), "sync");
      this.#done = Math.max(this.#done, upTo);
    }
    await this.#checkErrors();
  }

  /** Reads tensors back (one submit, one wait for all of them). f16 widens to f32. */
  async readMany(tensors: readonly Tensor[]): Promise<HostArray[]> {
    this.#checkLive();
    this.#endPass();
    const stages = tensors.map((t) => {
      const bytes = Math.ceil(t.byteLength / 4) * 4;
      const stage = this.#staging.take(bytes);
      if (bytes > 0) this.#enc().copyBufferToBuffer(t.buffer, 0, stage, 0, bytes);
      return { t, stage, bytes };
    });
    this.submit();
    this.readCount++;
    const upTo = this.#queued; // the copies above ran after everything sent before them
    await this.#wait(
      Promise.all(stages.map((s) => s.stage.mapAsync(GPUMapMode.READ, 0, s.stage.size))),
      "read",
    );
    // A copy's completion means all earlier work completed (one queue, in order).
    if (stages.some((st) => st.bytes > 0)) this.#done = Math.max(this.#done, upTo);
    await this.#checkErrors();
    return stages.map(({ t, stage, bytes }) => {
      const raw = stage.getMappedRange(0, bytes).slice(0);
      stage.unmap();
      this.#staging.put(stage);
      switch (t.dtype) {
        case "f32":
          return new Float32Array(raw, 0, t.size);
        case "i32":
          return new Int32Array(raw, 0, t.size);
        case "u32":
          return new Uint32Array(raw, 0, t.size);
        case "f16":
          return unpackF16(new Uint32Array(raw), t.size);
      }
    });
  }

  /** Reads one tensor back. */
  async read(t: Tensor): Promise<HostArray> {
    return (await this.readMany([t]))[0];
  }

  /** Reads a tensor back as f32 (any dtype). */
  async readF32(t: Tensor): Promise<Float32Array> {
    const a = await this.read(t);
    return a instanceof Float32Array ? a : Float32Array.from(a);
  }

  /** Frees the device. */
  destroy(): void {
    this.#destroyed = true;
    this.#bindGroups.clear();
    this.#pass = null;
    this.#encoder = null;
    this.pool.trim();
    this.#staging.trim();
    for (const a of this.#arenas) a.destroy();
    this.device.destroy();
  }
}

let shared: Promise<Gpu> | null = null;
let sharedGpu: Gpu | null = null;

/**
 * The process-wide context, created on first use, and created afresh when the previous one was
 * lost or destroyed (tensors of the old one stay invalid). `options` apply when it is created;
 * asking for a `kind` other than the live context's is a GpuError (one context per process).
 */
export function getGpu(options?: GpuOptions): Promise<Gpu> {
  if (sharedGpu?.lost) {
    shared = null;
    sharedGpu = null;
  }
  if (options?.kind !== undefined) {
    let want: AdapterKind;
    try {
      want = parseKernelKind(options.kind, "getGpu({ kind })");
    } catch (e) {
      return Promise.reject(e);
    }
    if (shared) {
      return shared.then((g) => {
        if (g.kind !== want) {
          throw new GpuError(
            `getGpu({ kind: "${want}" }): this process's context already runs "${g.kind}" kernels`,
          );
        }
        return g;
      });
    }
  }
  shared ??= Gpu.create(options).then(
    (g) => (sharedGpu = g),
    (e) => {
      shared = null;
      throw e;
    },
  );
  return shared;
}
