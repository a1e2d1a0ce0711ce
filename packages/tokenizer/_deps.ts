/**
 * What @lvm/tokenizer uses from @lvm/kernels, in one place.
 * @module
 */
export {
  adamw,
  bincount,
  clipGradNorm,
  conv2d,
  conv2dBackward,
  type Conv2dOptions,
  f32Literal,
  getGpu,
  type Gpu,
  groupNormFast,
  groupNormFastBackward,
  map,
  mean,
  nchwToRows,
  rowsToNchw,
  SafetensorsFile,
  scatterAddRows,
  Tensor,
  type TensorSource,
  TorchBinFile,
  vqLookup,
  vqNearest,
  writeSafetensors,
} from "@lvm/kernels";

export { writeFileAtomic } from "@lvm/kernels/fs";
