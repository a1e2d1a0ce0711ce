/** @lvm/transformer (in progress). @module */
export {};
