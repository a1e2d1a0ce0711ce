/** @lvm/image (in progress). @module */
export {};
