namespace DiffuSharp.Text;

/// <summary>Text to token ids and back. Encode adds nothing of its own (no BOS, no prefix space).</summary>
public abstract class TextTokenizer
{
    /// <summary>One more than the largest id the tokenizer can produce.</summary>
    public abstract int VocabSize { get; }

    public abstract IReadOnlyList<int> Encode(string text);

    /// <summary>The text of the ids; an id outside the vocabulary is a <see cref="TokenizerException"/>.</summary>
    public abstract string Decode(IEnumerable<int> ids);

    /// <summary>The id of the end-of-text token, or null when the vocabulary has none.</summary>
    public abstract int? EndOfTextId { get; }

    /// <summary>A short name for logs and checkpoint metadata.</summary>
    public abstract string Name { get; }
}

/// <summary>Tokenizer files that are missing or malformed, or ids that the vocabulary does not have.</summary>
public sealed class TokenizerException : DiffuException
{
    public TokenizerException(string message) : base(message) { }
    public TokenizerException(string message, Exception inner) : base(message, inner) { }
}
