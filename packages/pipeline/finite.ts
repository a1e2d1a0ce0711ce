/**
 * Non-finite weights: a checkpoint whose training diverged (or a corrupt file) holds NaN or
 * infinite values, and every score computed from it is NaN. {@link assertFiniteWeights} finds the
 * first such tensor so the error names the checkpoint and the tensor instead of printing `null`.
 * @module
 */
import type { Llama } from "@lvm/transformer";

/** A model whose weights hold NaN or infinite values. */
export class NonFiniteWeightsError extends Error {
  override name = "NonFiniteWeightsError";
}

/** The first parameter of `model` holding a non-finite value: name, index, value; null if none. */
export async function findNonFinite(
  model: Llama,
): Promise<{ name: string; index: number; value: number } | null> {
  for (const name of model.paramNames()) {
    // One tensor at a time: a 7B read back whole would need its size again in host memory.
    // Block-quantized matrices read back dequantized (a non-finite f16 scale shows there).
    const values = await model.readParam(name);
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) return { name, index: i, value: values[i] };
    }
  }
  return null;
}

/**
 * Throws a {@link NonFiniteWeightsError} naming `where` (the checkpoint) and the first tensor
 * holding NaN or an infinity; returns when every weight is finite.
 */
export async function assertFiniteWeights(model: Llama, where: string): Promise<void> {
  const bad = await findNonFinite(model);
  if (bad) {
    throw new NonFiniteWeightsError(
      `${where}: the weights are not finite (tensor "${bad.name}" holds ${bad.value} at index ${bad.index}); ` +
        `the checkpoint is corrupt or its training diverged: use an earlier checkpoint`,
    );
  }
}

/**
 * Checks that `values` (scores computed from `model`) are finite; when they are not, throws a
 * {@link NonFiniteWeightsError} if the weights are to blame, else an Error naming `what`.
 */
export async function assertFiniteScores(
  model: Llama,
  where: string,
  values: ArrayLike<number>,
  what = "log-probabilities",
): Promise<void> {
  for (let i = 0; i < values.length; i++) {
    if (Number.isFinite(values[i])) continue;
    await assertFiniteWeights(model, where);
    throw new Error(
      `${where}: the ${what} are not finite (${
        values[i]
      } at position ${i}) although the weights are`,
    );
  }
}
