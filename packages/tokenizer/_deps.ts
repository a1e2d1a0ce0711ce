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
  grid,
  groupNorm,
  groupNormBackward,
  map,
  mean,
  nchwToRows,
  Params,
  rowsToNchw,
  SafetensorsFile,
  scatterAddRows,
  Tensor,
  type TensorSource,
  TorchBinFile,
  vqLookup,
  vqNearest,
  WG_INDEX,
  writeSafetensors,
} from "@lvm/kernels";
