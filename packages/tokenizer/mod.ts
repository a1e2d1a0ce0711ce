/** @lvm/tokenizer (in progress). @module */
export {};
