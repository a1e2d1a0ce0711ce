/** @lvm/sampler (in progress). @module */
export {};
