using DiffuSharp.Models;
using DiffuSharp.Text;

namespace DiffuSharp.Eval;

/// <summary>
/// A model as the tasks see it: the network, its tokenizer, the token that starts a free sequence, the
/// BOS that <c>tokenizer.encode</c> adds by default (LLaMA's; GPT-2's adds none), its mask token, and the
/// SFT tokens. Encoding follows each task's <see cref="SpecialTokens"/> flags, so the ids are the reference's.
/// </summary>
public sealed record EvalModel(ILanguageModel Model, TextTokenizer Tokenizer, int StartToken, int? DefaultBos, int? MaskTokenId, SftTokens Sft)
{
    /// <summary>The ids of <paramref name="text"/> as the reference encodes it: with the default BOS in front when asked and the tokenizer adds one.</summary>
    public int[] Encode(string text, SpecialTokens special)
    {
        var ids = Tokenizer.Encode(text);
        return special == SpecialTokens.Default && DefaultBos is int bos ? [bos, .. ids] : [.. ids];
    }

    public string Decode(IEnumerable<int> ids) => Tokenizer.Decode(ids);
}
