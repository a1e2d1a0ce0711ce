/** Assertion helpers of this package's tests: the shared ones of @lvm/kernels/testing. @module */
export { assertEquals, assertRejects, assertThrows } from "@lvm/util/testing";
