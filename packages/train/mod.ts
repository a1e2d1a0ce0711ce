/** @lvm/train (in progress). @module */
export {};
