/** Assertion helpers of this package's tests: the shared ones of @lvm/util/testing. @module */
export { assertEquals, assertRejects, assertThrows } from "@lvm/util/testing";
