/**
 * PyTorch checkpoints (`torch.save`: `pytorch_model.bin`, `.pt`, `.pth`, `.ckpt`) read WITHOUT
 * executing pickle: a restricted unpickler that knows only the opcodes `torch.save` emits and
 * accepts only an allow-list of globals (OrderedDict, the tensor/parameter rebuild functions, the
 * typed storage classes). Everything else (os.system, builtins.eval,
 * torch.storage._load_from_bytes, ...) is refused with an {@link UnsafePickleError} naming the
 * global and the file; nothing in a pickle can run code here anyway: globals become inert markers.
 *
 * Formats:
 * - zip (torch >= 1.6): `<archive>/data.pkl` (the pickled object; tensors refer to storages by
 *   persistent id `('storage', torch.FloatStorage, key, location, numel)`), `<archive>/data/<key>`
 *   (raw little-endian storage bytes, stored uncompressed and 64-byte aligned by torch),
 *   `<archive>/version`, `<archive>/byteorder`. The central directory (and zip64 records when
 *   present) is read from the end of the file; entries are read by offset, never the whole file.
 *   Deflated entries are inflated with DecompressionStream("deflate-raw").
 * - legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles in a row (magic
 *   number, protocol version, sys info, the object, the sorted storage keys), then each storage
 *   as an int64 element count and its bytes.
 *
 * Tensors are `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: contiguous ones are read as
 * one range of their storage; views with other strides (transposes, slices with steps, expands)
 * are gathered into a contiguous copy. Nested containers (`{"state_dict": {...}, "epoch": 3}`)
 * flatten to dotted names (`state_dict.encoder.conv_in.weight`); the `prefix` option selects and
 * strips one subtree. Scalars in the tree (epoch, strings) land in `metadata`.
 * @module
 */
import { crc32 } from "@lvm/util";
import { type ByteSource, intoBuffer, MemorySource } from "./byte_source.ts";
import {
  ST_DTYPE_SIZE,
  type StDType,
  type TensorInfo,
  type TensorSource,
  toF32,
  WeightsFileError,
} from "./safetensors.ts";

/** An error about a PyTorch checkpoint: names the file and, where relevant, the tensor or entry. */
export class TorchBinError extends WeightsFileError {
  override name = "TorchBinError";
}

/** A pickle asked for a global outside the allow-list (the pickle was not, and is never, run). */
export class UnsafePickleError extends TorchBinError {
  override name = "UnsafePickleError";
  constructor(path: string, readonly global: string, detail: string) {
    super(path, detail);
    this.message = detail; // the detail already names the file
  }
}

// ---------------------------------------------------------------------------------------------
// Restricted unpickler

/** A global a pickle referred to (`module.name`), kept as an inert marker. */
export class PickleGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get fullName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** The storage classes torch pickles, and the dtype of their elements. */
const STORAGE_DTYPE: Record<string, StDType> = {
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  DoubleStorage: "F64",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};

/** The only globals a pickle may name. */
export const ALLOWED_GLOBALS: ReadonlySet<string> = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  ...Object.keys(STORAGE_DTYPE).map((s) => `torch.${s}`),
]);

/** A storage a tensor refers to (persistent id). */
export interface TorchStorageRef {
  kind: "storage";
  key: string;
  dtype: StDType;
  /** Elements in the storage. */
  numel: number;
  location: string;
}

/** A tensor as rebuilt from the pickle: a strided view into a storage. */
export interface TorchTensorRef {
  kind: "tensor";
  storage: TorchStorageRef;
  /** In elements. */
  offset: number;
  shape: number[];
  /** In elements, one per dimension. */
  stride: number[];
}

/** Options of {@link unpickleRestricted}. */
export interface UnpickleOptions {
  /** For messages: the file. */
  path?: string;
  /** For messages: the entry in the file (e.g. `archive/data.pkl`). */
  where?: string;
  /** Maps a persistent id (a tuple, as an array) to a value; absent: persistent ids are an error. */
  persistentLoad?: (pid: unknown) => unknown;
  /** Byte offset to start at (a file can hold several pickles in a row). */
  start?: number;
}

/** Thrown when a pickle runs past the end of the bytes given (the caller may retry with more). */
class PickleEOF extends Error {}

const td = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v);
}

/**
 * Unpickles `bytes` without executing anything. Values: None -> null, bool, int -> number (bigint
 * beyond 2^53), float, str, bytes -> Uint8Array, list/tuple -> array, dict/OrderedDict -> Map,
 * set -> Set, tensors -> {@link TorchTensorRef}, allowed globals -> {@link PickleGlobal}. A global
 * outside {@link ALLOWED_GLOBALS} is an {@link UnsafePickleError}; an unknown or unsupported
 * opcode, a bad argument or truncated bytes a {@link TorchBinError}.
 */
export function unpickleRestricted(
  bytes: Uint8Array,
  options: UnpickleOptions = {},
): { value: unknown; end: number } {
  try {
    return unpickle(bytes, options);
  } catch (e) {
    if (e instanceof PickleEOF) {
      throw new TorchBinError(
        options.path ?? "pickle",
        `${
          options.where ? options.where + ": " : ""
        }pickle data truncated (ran past byte ${bytes.length})`,
      );
    }
    throw e;
  }
}

function unpickle(bytes: Uint8Array, options: UnpickleOptions): { value: unknown; end: number } {
  const path = options.path ?? "pickle";
  const where = options.where ? ` (${options.where})` : "";
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = options.start ?? 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const fail = (detail: string): never => {
    throw new TorchBinError(path, `${detail} at pickle byte ${pos}${where}`);
  };

  const need = (n: number) => {
    if (pos + n > bytes.length) throw new PickleEOF();
  };
  const u8 = () => (need(1), bytes[pos++]);
  const u16 = () => (need(2), pos += 2, dv.getUint16(pos - 2, true));
  const u32 = () => (need(4), pos += 4, dv.getUint32(pos - 4, true));
  const i32 = () => (need(4), pos += 4, dv.getInt32(pos - 4, true));
  const u64 = () => {
    need(8);
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${v} too large`);
    return Number(v);
  };
  const take = (n: number) => {
    need(n);
    pos += n;
    return bytes.subarray(pos - n, pos);
  };
  const line = () => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) throw new PickleEOF();
    const s = latin1.decode(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const utf8 = (n: number) => {
    const b = take(n);
    try {
      return td.decode(b);
    } catch {
      return fail("string is not valid UTF-8");
    }
  };
  const pop = () => (stack.length ? stack.pop() : fail("stack underflow"));
  const top = () => (stack.length ? stack[stack.length - 1] : fail("stack underflow"));
  const popMark = () => {
    const items = stack;
    if (!metastack.length) fail("no MARK on the stack");
    stack = metastack.pop()!;
    return items;
  };
  const longFrom = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  };
  const findClass = (module: string, name: string): PickleGlobal => {
    const full = `${module}.${name}`;
    if (!ALLOWED_GLOBALS.has(full)) {
      throw new UnsafePickleError(
        path,
        full,
        `refusing to unpickle global "${full}" in ${path}${where}: only ` +
          `${[...ALLOWED_GLOBALS].slice(0, 5).join(", ")} and torch.*Storage may appear in a ` +
          `weight file (this is not a plain state dict, or it is malicious; nothing was executed)`,
      );
    }
    return new PickleGlobal(module, name);
  };
  const call = (f: unknown, args: unknown): unknown => {
    if (!(f instanceof PickleGlobal)) return fail(`call of a non-global (${describe(f)})`);
    if (!Array.isArray(args)) return fail(`${f.fullName} called with non-tuple arguments`);
    return callGlobal(f, args, (d) => fail(`${f.fullName}: ${d}`));
  };
  const setItems = (dict: unknown, items: unknown[]) => {
    if (!(dict instanceof Map)) return fail(`SETITEM(S) on ${describe(dict)}, expected a dict`);
    if (items.length % 2) fail("SETITEMS with an odd number of items");
    for (let i = 0; i < items.length; i += 2) dict.set(dictKey(items[i]), items[i + 1]);
  };
  const appendItems = (list: unknown, items: unknown[]) => {
    if (!Array.isArray(list)) return fail(`APPEND(S) on ${describe(list)}, expected a list`);
    for (const v of items) list.push(v);
  };
  const persistent = (pid: unknown) => {
    if (!options.persistentLoad) return fail("persistent id without a persistent loader");
    return options.persistentLoad(pid);
  };

  while (true) {
    const opPos = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail("pickle protocol above 5");
        break;
      case 0x95: // FRAME: framing is only a hint for buffered readers
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || metastack.length) {
          fail(`STOP with ${stack.length} values on the stack`);
        }
        return { value: stack[0], end: pos };
      // --- containers
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: { // DICT
        const items = popMark();
        const d = new Map();
        setItems(d, items);
        stack.push(d);
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: // LIST
        {
          const items = popMark(); // before reading `stack`: popMark replaces it
          stack.push(items);
        }
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x74: // TUPLE
        {
          const items = popMark(); // before reading `stack`: popMark replaces it
          stack.push(items);
        }
        break;
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop(), a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop(), b = pop(), a = pop();
        stack.push([a, b, c]);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x90: { // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof Set)) fail("ADDITEMS on a non-set");
        for (const v of items) (s as Set<unknown>).add(v);
        break;
      }
      case 0x91: // FROZENSET
        {
          const items = popMark();
          stack.push(new Set(items));
        }
        break;
      case 0x73: { // SETITEM
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      // --- stack
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      // --- scalars
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(longFrom(take(u8())));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) fail("negative LONG4 length");
        stack.push(longFrom(take(n)));
        break;
      }
      case 0x49: { // INT (text); "00"/"01" are False/True in protocol 0
        const s = line();
        if (s === "00" || s === "01") stack.push(s === "01");
        else if (/^[-+]?\d+$/.test(s)) stack.push(Number(s));
        else fail(`bad INT ${JSON.stringify(s)}`);
        break;
      }
      case 0x4c: { // LONG (text)
        const s = line().replace(/L$/, "");
        if (!/^[-+]?\d+$/.test(s)) fail(`bad LONG ${JSON.stringify(s)}`);
        const v = BigInt(s);
        stack.push(
          v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
            ? Number(v)
            : v,
        );
        break;
      }
      case 0x47: // BINFLOAT: big-endian f64
        need(8);
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x46: { // FLOAT (text)
        const v = Number(line());
        if (Number.isNaN(v)) fail("bad FLOAT");
        stack.push(v);
        break;
      }
      // --- strings and bytes
      case 0x58: // BINUNICODE
        stack.push(utf8(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(u64()));
        break;
      case 0x56: // UNICODE (raw-unicode-escape line)
        stack.push(
          line().replace(
            /\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g,
            (_, h4, h8) => String.fromCodePoint(parseInt(h4 ?? h8, 16)),
          ),
        );
        break;
      case 0x54: { // BINSTRING (py2 str): decoded as latin-1
        const n = i32();
        if (n < 0) fail("negative BINSTRING length");
        stack.push(latin1.decode(take(n)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1.decode(take(u8())));
        break;
      case 0x53: { // STRING (quoted repr)
        const s = line();
        const m = /^(['"])(.*)\1$/.exec(s);
        if (!m) fail("bad STRING");
        stack.push(m![2]);
        break;
      }
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      // --- memo
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: { // PUT
        const s = line();
        if (!/^\d+$/.test(s)) fail("bad PUT index");
        memo.set(Number(s), top());
        break;
      }
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET
        const i = op === 0x68 ? u8() : op === 0x6a ? u32() : Number(line());
        if (!memo.has(i)) fail(`memo ${i} not defined`);
        stack.push(memo.get(i));
        break;
      }
      // --- globals and calls (allow-list only; calls build inert values)
      case 0x63: { // GLOBAL
        const module = line(), name = line();
        stack.push(findClass(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop(), module = pop();
        if (typeof module !== "string" || typeof name !== "string") {
          fail("STACK_GLOBAL of non-strings");
        }
        stack.push(findClass(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop(), f = pop();
        stack.push(call(f, args));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop(), cls = pop();
        stack.push(call(cls, args));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        const kwargs = pop(), args = pop(), cls = pop();
        if (!(kwargs instanceof Map) || kwargs.size) fail("NEWOBJ_EX with keyword arguments");
        stack.push(call(cls, args));
        break;
      }
      case 0x6f: { // OBJ
        const items = popMark();
        if (!items.length) fail("OBJ without a class");
        stack.push(call(items[0], items.slice(1)));
        break;
      }
      case 0x69: { // INST
        const cls = findClass(line(), line());
        const args = popMark();
        stack.push(call(cls, args));
        break;
      }
      case 0x62: { // BUILD: set state; only inert: dict attributes (OrderedDict._metadata) are dropped
        const state = pop();
        const obj = top();
        if (!(obj instanceof Map) && !(isTensorRef(obj))) fail(`BUILD on ${describe(obj)}`);
        void state;
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistent(pop()));
        break;
      case 0x50: // PERSID
        stack.push(persistent(line()));
        break;
      default: {
        const names: Record<number, string> = {
          0x82: "EXT1",
          0x83: "EXT2",
          0x84: "EXT4",
          0x97: "NEXT_BUFFER",
          0x98: "READONLY_BUFFER",
        };
        pos = opPos;
        fail(
          names[op]
            ? `unsupported pickle opcode ${names[op]} (0x${op.toString(16)})`
            : `unknown pickle opcode 0x${op.toString(16)} (corrupt data or not a pickle)`,
        );
      }
    }
  }
}

function dictKey(k: unknown): unknown {
  // tuple keys would compare by identity in a Map: use their JSON text instead
  return Array.isArray(k)
    ? JSON.stringify(k, (_, v) => (typeof v === "bigint" ? String(v) : v))
    : k;
}

function isTensorRef(v: unknown): v is TorchTensorRef {
  return typeof v === "object" && v !== null && (v as TorchTensorRef).kind === "tensor";
}

function isStorageRef(v: unknown): v is TorchStorageRef {
  return typeof v === "object" && v !== null && (v as TorchStorageRef).kind === "storage";
}

function describe(v: unknown): string {
  if (v === null) return "None";
  if (v instanceof Map) return "a dict";
  if (Array.isArray(v)) return "a list/tuple";
  if (v instanceof PickleGlobal) return `global ${v.fullName}`;
  if (isTensorRef(v)) return "a tensor";
  if (isStorageRef(v)) return "a storage";
  return typeof v;
}

/** What each allowed callable builds. */
function callGlobal(f: PickleGlobal, args: unknown[], fail: (d: string) => never): unknown {
  switch (f.fullName) {
    case "collections.OrderedDict": {
      const d = new Map();
      if (args.length && Array.isArray(args[0])) {
        for (const kv of args[0]) {
          if (!Array.isArray(kv) || kv.length !== 2) fail("expected (key, value) pairs");
          d.set(dictKey(kv[0]), kv[1]);
        }
      }
      return d;
    }
    case "torch._utils._rebuild_tensor":
    case "torch._utils._rebuild_tensor_v2": {
      const [storage, offset, size, stride] = args;
      if (!isStorageRef(storage)) {
        return fail(`argument 0 is ${describe(storage)}, expected a storage`);
      }
      if (!isInt(offset) || offset < 0) {
        return fail(`storage offset ${String(offset)} is not a count`);
      }
      if (!Array.isArray(size) || !size.every((d) => isInt(d) && d >= 0)) {
        return fail(`size ${JSON.stringify(size)} is not a list of counts`);
      }
      if (
        !Array.isArray(stride) || stride.length !== size.length ||
        !stride.every((d) => isInt(d) && d >= 0)
      ) {
        return fail(`stride ${JSON.stringify(stride)} does not fit size [${size}]`);
      }
      const t: TorchTensorRef = {
        kind: "tensor",
        storage,
        offset,
        shape: size as number[],
        stride: stride as number[],
      };
      return t;
    }
    case "torch._utils._rebuild_parameter":
    case "torch._utils._rebuild_parameter_with_state":
      if (!isTensorRef(args[0])) {
        return fail(`argument 0 is ${describe(args[0])}, expected a tensor`);
      }
      return args[0];
    default:
      return fail("is not callable here (only a value in a persistent id)");
  }
}

// ---------------------------------------------------------------------------------------------
// Zip archives (read by offset)

interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

const SIG_EOCD = 0x06054b50, SIG_Z64_LOC = 0x07064b50, SIG_Z64_EOCD = 0x06064b50;
const SIG_CEN = 0x02014b50, SIG_LOC = 0x04034b50;

function u64At(dv: DataView, at: number, fail: (d: string) => never): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`zip field ${v} too large`);
  return Number(v);
}

/** Reads the central directory (zip64 aware) of `file`. */
async function readZipDirectory(file: ByteSource): Promise<Map<string, ZipEntry>> {
  const fail = (d: string): never => {
    throw new TorchBinError(file.path, d);
  };
  const tailLen = Math.min(file.size, 22 + 65535);
  const tailStart = file.size - tailLen;
  const tail = await file.read(tailStart, tailLen);
  const tdv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  let e = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (
      tdv.getUint32(i, true) === SIG_EOCD && i + 22 + tdv.getUint16(i + 20, true) <= tail.length
    ) {
      e = i;
      break;
    }
  }
  if (e < 0) {
    fail(
      `no zip end-of-central-directory record in the last ${tailLen} bytes: the file is truncated ` +
        `or corrupt (a torch.save zip ends with its directory)`,
    );
  }
  let count = tdv.getUint16(e + 10, true);
  let cdSize = tdv.getUint32(e + 12, true);
  let cdOffset = tdv.getUint32(e + 16, true);
  let cdEnd = tailStart + e; // the directory must end before this
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const locAt = tailStart + e - 20;
    if (locAt < 0) fail("zip64 end record expected but the file is too short");
    const loc = await file.read(locAt, 20);
    const ldv = new DataView(loc.buffer);
    if (ldv.getUint32(0, true) !== SIG_Z64_LOC) {
      fail("zip64 end-of-central-directory locator missing");
    }
    const z64At = u64At(ldv, 8, fail);
    if (z64At + 56 > locAt) fail(`zip64 end record offset ${z64At} out of range (truncated?)`);
    const z = await file.read(z64At, 56);
    const zdv = new DataView(z.buffer);
    if (zdv.getUint32(0, true) !== SIG_Z64_EOCD) {
      fail("zip64 end-of-central-directory record missing");
    }
    count = u64At(zdv, 32, fail);
    cdSize = u64At(zdv, 40, fail);
    cdOffset = u64At(zdv, 48, fail);
    cdEnd = z64At;
  }
  if (cdOffset + cdSize > cdEnd) {
    fail(
      `central directory [${cdOffset}, ${
        cdOffset + cdSize
      }) runs past its end record at ${cdEnd} ` +
        `(truncated or corrupt zip)`,
    );
  }
  const cd = await file.read(cdOffset, cdSize);
  const dv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || dv.getUint32(p, true) !== SIG_CEN) {
      fail(`corrupt central directory at entry ${i}`);
    }
    const flags = dv.getUint16(p + 8, true);
    const method = dv.getUint16(p + 10, true);
    const crc32 = dv.getUint32(p + 16, true);
    let compressedSize = dv.getUint32(p + 20, true);
    let size = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true), extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    let localOffset = dv.getUint32(p + 42, true);
    if (p + 46 + nameLen + extraLen + commentLen > cd.length) {
      fail(`corrupt central directory at entry ${i}`);
    }
    const name = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen));
    // zip64 extra field: the 64-bit values of the fields that are 0xFFFFFFFF, in this order
    let x = p + 46 + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = dv.getUint16(x, true), len = dv.getUint16(x + 2, true);
      if (id === 0x0001) {
        let q = x + 4;
        const next = () => {
          if (q + 8 > x + 4 + len) fail(`entry ${name}: short zip64 extra field`);
          q += 8;
          return u64At(dv, q - 8, fail);
        };
        if (size === 0xffffffff) size = next();
        if (compressedSize === 0xffffffff) compressedSize = next();
        if (localOffset === 0xffffffff) localOffset = next();
      }
      x += 4 + len;
    }
    entries.set(name, { name, method, flags, crc32, compressedSize, size, localOffset });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

async function inflateRaw(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(
    new DecompressionStream("deflate-raw"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** One zip archive's entries, read by offset. */
class ZipArchive {
  readonly #dataOffset = new Map<string, number>();
  constructor(readonly file: ByteSource, readonly entries: Map<string, ZipEntry>) {}

  #fail(entry: ZipEntry, d: string): never {
    throw new TorchBinError(this.file.path, `zip entry ${entry.name}: ${d}`);
  }

  /** File offset of the entry's (possibly compressed) data, from its local header. */
  async dataOffset(entry: ZipEntry): Promise<number> {
    const cached = this.#dataOffset.get(entry.name);
    if (cached !== undefined) return cached;
    if (entry.flags & 1) this.#fail(entry, "is encrypted");
    if (entry.method !== 0 && entry.method !== 8) {
      this.#fail(
        entry,
        `compression method ${entry.method} is not supported (only stored and deflate)`,
      );
    }
    const h = await this.file.read(entry.localOffset, 30);
    const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
    if (h.length < 30 || dv.getUint32(0, true) !== SIG_LOC) {
      this.#fail(entry, `no local header at byte ${entry.localOffset} (truncated or corrupt zip)`);
    }
    const off = entry.localOffset + 30 + dv.getUint16(26, true) + dv.getUint16(28, true);
    if (off + entry.compressedSize > this.file.size) {
      this.#fail(
        entry,
        `data [${off}, ${
          off + entry.compressedSize
        }) runs past the end of the ${this.file.size}-byte file (truncated)`,
      );
    }
    this.#dataOffset.set(entry.name, off);
    return off;
  }

  /** The whole entry, inflated; with `verify`, its CRC-32 is checked. */
  async read(entry: ZipEntry, verify: boolean): Promise<Uint8Array> {
    const off = await this.dataOffset(entry);
    const raw = await this.file.read(off, entry.compressedSize);
    if (raw.length !== entry.compressedSize) this.#fail(entry, "truncated");
    let data = raw;
    if (entry.method === 8) {
      try {
        data = await inflateRaw(raw);
      } catch (e) {
        this.#fail(entry, `deflate data is corrupt (${(e as Error).message})`);
      }
    }
    if (data.length !== entry.size) {
      this.#fail(entry, `holds ${data.length} bytes, the directory says ${entry.size}`);
    }
    if (verify && crc32(data) !== entry.crc32) {
      this.#fail(entry, "CRC-32 mismatch: the data is corrupt");
    }
    return data;
  }

  /** `length` bytes at `offset` inside the (inflated) entry. */
  async readRange(entry: ZipEntry, offset: number, length: number): Promise<Uint8Array> {
    if (entry.method === 8) return (await this.read(entry, false)).slice(offset, offset + length);
    const out = await this.file.read((await this.dataOffset(entry)) + offset, length);
    if (out.length !== length) this.#fail(entry, "truncated");
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// The checkpoint

/** {@link TensorInfo} plus where a torch tensor lives. */
export interface TorchTensorInfo extends TensorInfo {
  storageKey: string;
  /** In elements. */
  storageOffset: number;
  /** In elements. */
  stride: number[];
  /** Whether the stored layout is row-major contiguous (otherwise reads gather a copy). */
  contiguous: boolean;
}

/** Options of {@link TorchBinReader.fromSource} (and `TorchBinFile.open`). */
export interface TorchBinOptions {
  /**
   * Keep only tensors whose flattened name starts with this and strip it, e.g. `"state_dict."` for
   * `{"state_dict": {...}, "epoch": 3}`.
   */
  prefix?: string;
  /** Check each zip storage entry's CRC-32 on its first read (reads the whole entry). Default false. */
  verifyCrc?: boolean;
}

interface StorageSource {
  key: string;
  dtype: StDType;
  numel: number;
  /** Bytes available for the storage. */
  byteLength: number;
  read(byteOffset: number, byteLength: number): Promise<Uint8Array>;
}

/** Row-major contiguity (dimensions of size 1 may have any stride). */
function isContiguous(shape: number[], stride: number[]): boolean {
  let expect = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expect) return false;
    expect *= shape[d];
  }
  return true;
}

/** Elements of the storage a view touches after its offset (0 for an empty view). */
function viewSpan(shape: number[], stride: number[]): number {
  if (shape.some((d) => d === 0)) return 0;
  return 1 + shape.reduce((s, d, i) => s + (d - 1) * stride[i], 0);
}

/** Copies a strided view (`src` starts at the view's first element) into row-major order. */
function gather(src: Uint8Array, es: number, shape: number[], stride: number[]): Uint8Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(n * es);
  // copy whole elements as 1/2/4-byte words (8-byte elements as two u32: no float canonicalisation)
  const w = es === 1 ? 1 : es === 2 ? 2 : 4, k = es / w;
  const View = w === 1 ? Uint8Array : w === 2 ? Uint16Array : Uint32Array;
  const s = new View(src.buffer as ArrayBuffer, src.byteOffset, src.byteLength / w);
  const o = new View(out.buffer);
  const nd = shape.length, L = shape[nd - 1], SL = stride[nd - 1];
  const idx = new Array(nd).fill(0);
  let base = 0;
  for (let at = 0; at < n; at += L) {
    if (k === 1) { for (let j = 0; j < L; j++) o[at + j] = s[base + j * SL]; }
    else {
      for (let j = 0; j < L; j++) {
        const si = (base + j * SL) * 2, oi = (at + j) * 2;
        o[oi] = s[si];
        o[oi + 1] = s[si + 1];
      }
    }
    for (let d = nd - 2; d >= 0; d--) {
      idx[d]++;
      base += stride[d];
      if (idx[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** What {@link TorchBinReader} parsed of a checkpoint. */
interface TorchBinParsed {
  format: "zip" | "legacy";
  tensors: Map<string, TorchTensorRef>;
  storages: Map<string, StorageSource>;
  metadata: Record<string, string>;
}

/**
 * A PyTorch checkpoint (zip or legacy format) read from a {@link ByteSource}, as a
 * {@link TensorSource}: {@link TorchBinReader.fromSource} unpickles the object with the restricted
 * unpickler and checks every tensor against its storage; `readRaw` then reads one tensor's bytes.
 * `@lvm/weights/fs`'s `TorchBinFile.open(path)` is this over a file.
 *
 * @example
 * ```ts
 * import { TorchBinReader } from "@lvm/weights";
 * // In a browser: the bytes of a fetch (here: one of this repository's fixtures).
 * const url = new URL("../../tests/fixtures/kernels/torch_state.bin", import.meta.url);
 * const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
 * const sd = await TorchBinReader.fromBytes(bytes, "torch_state.bin");
 * const w = await sd.readF32("conv.weight"); // Float32Array(54): (3, 2, 3, 3)
 * sd.close();
 * ```
 */
export class TorchBinReader implements TensorSource {
  readonly #tensors: Map<string, TorchTensorRef>;
  readonly #storages: Map<string, StorageSource>;
  /** "zip" (torch >= 1.6) or "legacy". */
  readonly format: "zip" | "legacy";
  /** Scalars found in the pickled tree (flattened names), e.g. `{epoch: "3"}`. */
  readonly metadata: Record<string, string>;

  protected constructor(protected readonly file: ByteSource, parsed: TorchBinParsed) {
    this.#tensors = parsed.tensors;
    this.#storages = parsed.storages;
    this.format = parsed.format;
    this.metadata = parsed.metadata;
  }

  /** The file (or URL) the tensors come from. */
  get path(): string {
    return this.file.path;
  }

  /**
   * Parses `source`. Errors ({@link TorchBinError}, {@link UnsafePickleError}) name the source and
   * say what was wrong: not a checkpoint, truncated zip, a refused global, a storage that is
   * missing or too small for a tensor, a prefix matching nothing; `source` is then closed.
   */
  protected static async parse(
    file: ByteSource,
    options: TorchBinOptions = {},
  ): Promise<TorchBinParsed> {
    const path = file.path;
    try {
      const head = await file.read(0, 4);
      let root: unknown, storages: Map<string, StorageSource>, format: "zip" | "legacy";
      if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b) {
        format = "zip";
        ({ root, storages } = await openZip(file, options));
      } else if (head.length >= 2 && head[0] === 0x80) {
        format = "legacy";
        ({ root, storages } = await openLegacy(file));
      } else {
        throw new TorchBinError(
          path,
          `not a PyTorch checkpoint: expected a zip archive (torch >= 1.6) or a pickle stream ` +
            `(legacy torch.save); the file starts with ${
              Array.from(head, (b) => b.toString(16).padStart(2, "0")).join(" ") || "nothing"
            }`,
        );
      }
      const { tensors, metadata } = flatten(path, root, options.prefix);
      for (const [name, t] of tensors) {
        const s = storages.get(t.storage.key);
        if (!s) {
          throw new TorchBinError(path, `storage ${t.storage.key} is missing from the file`, name);
        }
        const es = ST_DTYPE_SIZE[t.storage.dtype];
        const end = t.offset + viewSpan(t.shape, t.stride);
        if (viewSpan(t.shape, t.stride) > 0 && (end > s.numel || end * es > s.byteLength)) {
          throw new TorchBinError(
            path,
            `[${t.shape}] at offset ${t.offset} with stride [${t.stride}] needs ${end} elements of ` +
              `storage ${t.storage.key}, which holds ${
                Math.min(s.numel, Math.floor(s.byteLength / es))
              }`,
            name,
          );
        }
      }
      return { format, tensors, storages, metadata };
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** The checkpoint in `source` (see {@link TorchBinReader.parse} for what is checked). */
  static async fromSource(
    source: ByteSource,
    options: TorchBinOptions = {},
  ): Promise<TorchBinReader> {
    return new TorchBinReader(source, await TorchBinReader.parse(source, options));
  }

  /** The checkpoint in memory (`name` for messages). */
  static fromBytes(
    bytes: Uint8Array,
    name = "memory",
    options: TorchBinOptions = {},
  ): Promise<TorchBinReader> {
    return TorchBinReader.fromSource(new MemorySource(bytes, name), options);
  }

  /** Tensor names in pickle order. */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  #get(name: string): TorchTensorRef {
    const t = this.#tensors.get(name);
    if (!t) {
      const names = this.names();
      throw new TorchBinError(
        this.path,
        `no such tensor (the file has ${names.length}${names.length ? `, e.g. ${names[0]}` : ""})`,
        name,
      );
    }
    return t;
  }

  info(name: string): TorchTensorInfo {
    const t = this.#get(name);
    const numel = t.shape.reduce((a, b) => a * b, 1);
    return {
      name,
      dtype: t.storage.dtype,
      shape: [...t.shape],
      byteLength: numel * ST_DTYPE_SIZE[t.storage.dtype],
      storageKey: t.storage.key,
      storageOffset: t.offset,
      stride: [...t.stride],
      contiguous: isContiguous(t.shape, t.stride),
    };
  }

  /**
   * The tensor's bytes (see `TensorSource.readRaw`). With `out` they are copied there: zip
   * entries are read (or inflated) whole, so it spares the caller's copy, not the read's.
   */
  async readRaw(name: string, out?: Uint8Array): Promise<Uint8Array> {
    const t = this.#get(name);
    if (this.file.closed) throw new TorchBinError(this.path, "read after close()", name);
    const s = this.#storages.get(t.storage.key)!;
    const es = ST_DTYPE_SIZE[t.storage.dtype];
    const span = viewSpan(t.shape, t.stride);
    let bytes: Uint8Array;
    if (span === 0) bytes = new Uint8Array(0);
    else if (isContiguous(t.shape, t.stride)) bytes = await s.read(t.offset * es, span * es);
    else bytes = gather(await s.read(t.offset * es, span * es), es, t.shape, t.stride);
    if (!out) return bytes;
    const dst = intoBuffer(out, bytes.length, `${this.path}: tensor "${name}"`);
    dst.set(bytes);
    return dst;
  }

  async readF32(name: string, out?: Float32Array): Promise<Float32Array> {
    const t = this.#get(name);
    return toF32(t.storage.dtype, await this.readRaw(name), `${this.path}: tensor "${name}"`, out);
  }

  close(): void {
    this.file.close();
  }
}

/** Flattens the unpickled tree into dotted tensor names (+ scalar metadata). */
function flatten(path: string, root: unknown, prefix?: string) {
  const tensors = new Map<string, TorchTensorRef>();
  const metadata: Record<string, string> = {};
  const onPath = new Set<unknown>();
  const walk = (v: unknown, name: string, depth: number) => {
    if (depth > 64) {
      throw new TorchBinError(path, `nesting deeper than 64 levels at ${JSON.stringify(name)}`);
    }
    if (isTensorRef(v)) {
      if (tensors.has(name)) {
        throw new TorchBinError(path, "two tensors flatten to this name", name);
      }
      tensors.set(name, v);
    } else if (v instanceof Map || Array.isArray(v)) {
      if (onPath.has(v)) return; // a cycle built with the memo: nothing new below
      onPath.add(v);
      const items: [unknown, unknown][] = v instanceof Map ? [...v] : v.map((x, i) => [i, x]);
      for (const [k, x] of items) {
        walk(x, name === "" ? String(k) : `${name}.${String(k)}`, depth + 1);
      }
      onPath.delete(v);
    } else if (
      typeof v === "string" || typeof v === "number" || typeof v === "boolean" ||
      typeof v === "bigint"
    ) {
      metadata[name] = String(v);
    }
  };
  walk(root, "", 0);
  if (prefix === undefined || prefix === "") return { tensors, metadata };
  const kept = new Map<string, TorchTensorRef>();
  for (const [n, t] of tensors) if (n.startsWith(prefix)) kept.set(n.slice(prefix.length), t);
  if (!kept.size) {
    const tops = [...new Set([...tensors.keys()].map((n) => n.split(".")[0]))].slice(0, 8);
    throw new TorchBinError(
      path,
      `no tensor name starts with prefix ${JSON.stringify(prefix)}; top-level names: ${
        tops.join(", ") || "(no tensors)"
      }`,
    );
  }
  return { tensors: kept, metadata };
}

/** A persistent-id loader collecting storages; `legacy` ids carry a 6th view field. */
function storageLoader(path: string, where: string) {
  const refs = new Map<string, TorchStorageRef>();
  const load = (pid: unknown): TorchStorageRef => {
    const fail = (d: string): never => {
      throw new TorchBinError(path, `${where}: persistent id ${d}`);
    };
    if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
      return fail(`${JSON.stringify(pid)} is not ('storage', type, key, location, numel)`);
    }
    const [, type, key, location, numel, view] = pid;
    if (!(type instanceof PickleGlobal) || type.module !== "torch" || !STORAGE_DTYPE[type.name]) {
      return fail(`names storage type ${describe(type)}`);
    }
    if (typeof key !== "string" && !isInt(key)) return fail(`has key ${String(key)}`);
    if (!isInt(numel) || numel < 0) return fail(`has element count ${String(numel)}`);
    if (view !== undefined && view !== null) {
      return fail("is a storage view (pre-1.0 format), not supported");
    }
    const dtype = STORAGE_DTYPE[type.name];
    const k = String(key);
    const prev = refs.get(k);
    if (prev && prev.dtype !== dtype) {
      return fail(`reuses storage ${k} as ${dtype} after ${prev.dtype}, not supported`);
    }
    const ref = prev ??
      { kind: "storage", key: k, dtype, numel, location: String(location) } as TorchStorageRef;
    refs.set(k, ref);
    return ref;
  };
  return { refs, load };
}

async function openZip(file: ByteSource, options: TorchBinOptions) {
  const zip = new ZipArchive(file, await readZipDirectory(file));
  const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pkls.length !== 1) {
    throw new TorchBinError(
      file.path,
      pkls.length
        ? `several pickles (${pkls.join(", ")}): not a single torch.save archive`
        : `no <archive>/data.pkl entry: not a torch.save archive (entries: ${
          [...zip.entries.keys()].slice(0, 5).join(", ") || "none"
        })`,
    );
  }
  const prefix = pkls[0].slice(0, -"data.pkl".length);
  const bo = zip.entries.get(`${prefix}byteorder`);
  if (bo) {
    const order = new TextDecoder().decode(await zip.read(bo, true)).trim();
    if (order !== "little") {
      throw new TorchBinError(
        file.path,
        `byte order "${order}" is not supported (only little-endian)`,
      );
    }
  }
  const pkl = await zip.read(zip.entries.get(pkls[0])!, true);
  const { refs, load } = storageLoader(file.path, pkls[0]);
  const { value: root } = unpickleRestricted(pkl, {
    path: file.path,
    where: pkls[0],
    persistentLoad: load,
  });
  const storages = new Map<string, StorageSource>();
  const verified = new Set<string>();
  for (const [key, ref] of refs) {
    const entry = zip.entries.get(`${prefix}data/${key}`);
    if (!entry) {
      throw new TorchBinError(
        file.path,
        `storage ${key} is referenced but entry ${prefix}data/${key} is missing`,
      );
    }
    await zip.dataOffset(entry); // checks the local header and that the data lies within the file
    storages.set(key, {
      key,
      dtype: ref.dtype,
      numel: ref.numel,
      byteLength: entry.size,
      read: async (off, len) => {
        if (options.verifyCrc && !verified.has(key)) {
          const all = await zip.read(entry, true);
          verified.add(key);
          return all.slice(off, off + len);
        }
        return zip.readRange(entry, off, len);
      },
    });
  }
  return { root, storages };
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

async function openLegacy(file: ByteSource) {
  const path = file.path;
  let size = Math.min(file.size, 1 << 20);
  while (true) {
    const buf = await file.read(0, size);
    try {
      return parseLegacy(file, buf);
    } catch (e) {
      if (!(e instanceof PickleEOF) || size >= file.size) {
        if (e instanceof PickleEOF) {
          throw new TorchBinError(
            path,
            "legacy checkpoint truncated: a pickle runs past the end of the file",
          );
        }
        throw e;
      }
      size = Math.min(file.size, size * 4);
    }
  }
}

function parseLegacy(file: ByteSource, buf: Uint8Array) {
  const path = file.path;
  const next = (start: number, where: string, persistentLoad?: (pid: unknown) => unknown) =>
    unpickle(buf, { path, where, start, persistentLoad });
  const magic = next(0, "legacy magic number");
  const m = magic.value;
  if ((typeof m !== "number" && typeof m !== "bigint") || BigInt(m) !== LEGACY_MAGIC) {
    throw new TorchBinError(
      path,
      `not a torch.save file: first pickle is ${describe(magic.value)}, not the magic number`,
    );
  }
  const proto = next(magic.end, "legacy protocol version");
  if (proto.value !== 1001) {
    throw new TorchBinError(path, `legacy protocol version ${String(proto.value)}, expected 1001`);
  }
  const sys = next(proto.end, "legacy sys_info");
  if (sys.value instanceof Map && sys.value.get("little_endian") === false) {
    throw new TorchBinError(path, "big-endian legacy checkpoint is not supported");
  }
  const { refs, load } = storageLoader(path, "legacy object pickle");
  const main = next(sys.end, "legacy object pickle", load);
  const keys = next(main.end, "legacy storage keys");
  if (!Array.isArray(keys.value) || !keys.value.every((k) => typeof k === "string")) {
    throw new TorchBinError(path, "legacy storage key list is not a list of strings");
  }
  return {
    root: main.value,
    storages: legacyStorages(file, keys.value as string[], refs, keys.end),
  };
}

function legacyStorages(
  file: ByteSource,
  keys: string[],
  refs: Map<string, TorchStorageRef>,
  start: number,
): Map<string, StorageSource> {
  // Offsets are found lazily: each storage's element count sits just before its bytes.
  const storages = new Map<string, StorageSource>();
  let located: Promise<Map<string, number>> | undefined;
  const locate = () =>
    located ??= (async () => {
      const at = new Map<string, number>();
      let off = start;
      for (const key of keys) {
        const ref = refs.get(key);
        if (!ref) {
          throw new TorchBinError(
            file.path,
            `legacy storage ${key} is listed but never used`,
          );
        }
        const h = await file.read(off, 8);
        if (h.length < 8) {
          throw new TorchBinError(
            file.path,
            `legacy storage ${key}: file truncated at byte ${off}`,
          );
        }
        const n = Number(new DataView(h.buffer).getBigInt64(0, true));
        const bytes = n * ST_DTYPE_SIZE[ref.dtype];
        if (n < 0 || off + 8 + bytes > file.size) {
          throw new TorchBinError(
            file.path,
            `legacy storage ${key}: ${n} elements run past the end of the file (truncated)`,
          );
        }
        at.set(key, off + 8);
        off += 8 + bytes;
      }
      return at;
    })();
  for (const key of keys) {
    const ref = refs.get(key);
    if (!ref) continue;
    storages.set(key, {
      key,
      dtype: ref.dtype,
      numel: ref.numel,
      byteLength: ref.numel * ST_DTYPE_SIZE[ref.dtype],
      read: async (off, len) => {
        const base = (await locate()).get(key)!;
        const out = await file.read(base + off, len);
        if (out.length !== len) {
          throw new TorchBinError(file.path, `legacy storage ${key}: file truncated`);
        }
        return out;
      },
    });
  }
  return storages;
}

// ---------------------------------------------------------------------------------------------
// Any weights
