/**
 * What @lvm/tokenizer uses from @lvm/gpu and @lvm/kernels, in one place.
 * @module
 */
export {
  adamw,
  bincount,
  clipGradNorm,
  conv2d,
  conv2dBackward,
  Conv2dGroupStats,
  type Conv2dOptions,
  Conv2dStash,
  Conv2dWeightCache,
  countNonzero,
  f32Literal,
  groupNormAffineStatsFromStats,
  groupNormFastBackward,
  groupNormPlaneAffineStats,
  map,
  mean,
  nchwToRows,
  rowsToNchw,
  scatterAddRows,
  vqLookup,
  vqNearest,
} from "@lvm/kernels";
export { getGpu, type Gpu, Tensor } from "@lvm/gpu";
