/** @lvm/sentence (in progress). @module */
export {};
