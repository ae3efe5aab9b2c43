using System.Buffers.Binary;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace DiffuSharp.Data;

/// <summary>A token shard that is missing, unreadable or malformed. The message names the file and the problem.</summary>
public sealed class TokenShardException : DiffuException
{
    public TokenShardException(string filePath, string problem) : base($"{filePath}: {problem}") { FilePath = filePath; }

    public TokenShardException(string filePath, string problem, Exception inner) : base($"{filePath}: {problem}", inner) { FilePath = filePath; }

    public string FilePath { get; }
}

/// <summary>What a shard records about where its tokens came from.</summary>
/// <param name="Tokenizer">The tokenizer's name (e.g. "gpt2", "gpt2-first-512").</param>
/// <param name="Sources">The text files the documents were read from, in order.</param>
public sealed record TokenShardMetadata(string Tokenizer, IReadOnlyList<string> Sources);

/// <summary>
/// The byte layout of a token shard (all integers little-endian):
/// <code>
///  0  "DIFFUTOK"                      8 bytes
///  8  format version                  u32 (1)
/// 12  token width in bytes            u32 (2 when the vocabulary has at most 65536 ids, else 4)
/// 16  vocabulary size                 u32
/// 20  document count D                u64
/// 28  token count N                   u64
/// 36  metadata length M               u32
/// 40  metadata                        M bytes of UTF-8 JSON {"tokenizer", "sources", "eos_id"},
///                                     padded with spaces so what follows starts at a multiple of 8
/// 40+M  document offsets              u64 × (D + 1): document d is tokens [offset d, offset d+1)
///       tokens                        N × width bytes
/// </code>
/// The file ends exactly after the last token.
/// </summary>
static class TokenShardFormat
{
    public const int Version = 1;
    public const int HeaderBytes = 40;
    public const int MaxMetadataBytes = 16 << 20;
    public static ReadOnlySpan<byte> Magic => "DIFFUTOK"u8;

    public static int TokenWidth(int vocabSize) => vocabSize <= 65536 ? 2 : 4;

    public static byte[] EncodeHeader(int tokenWidth, int vocabSize, long documents, long tokens, byte[] metadata)
    {
        var header = new byte[HeaderBytes];
        Magic.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(8), Version);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(12), (uint)tokenWidth);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(16), (uint)vocabSize);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(20), (ulong)documents);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(28), (ulong)tokens);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(36), (uint)metadata.Length);
        return header;
    }

    /// <summary>The metadata JSON, padded with spaces so that header + metadata is a multiple of 8 bytes.</summary>
    public static byte[] EncodeMetadata(TokenShardMetadata metadata, int? eosId)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("tokenizer", metadata.Tokenizer);
            json.WriteStartArray("sources");
            foreach (var source in metadata.Sources) json.WriteStringValue(source);
            json.WriteEndArray();
            if (eosId is { } eos) json.WriteNumber("eos_id", eos);
            else json.WriteNull("eos_id");
            json.WriteEndObject();
        }
        while ((HeaderBytes + buffer.Length) % 8 != 0) buffer.WriteByte((byte)' ');
        return buffer.ToArray();
    }

    /// <summary>Parses and checks the metadata block; every problem is a <see cref="TokenShardException"/>.</summary>
    public static (TokenShardMetadata Metadata, int? EosId) DecodeMetadata(string path, ReadOnlySpan<byte> bytes, int vocabSize)
    {
        JsonDocument document;
        try
        {
            // The writer never repeats a key. Checking that unescapes every key, which throws an
            // InvalidOperationException on half a surrogate pair (an escape such as \ud800).
            document = JsonDocument.Parse(new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes),
                                          new JsonDocumentOptions { AllowDuplicateProperties = false });
        }
        catch (Exception e) when (e is JsonException or DecoderFallbackException or InvalidOperationException)
        {
            throw new TokenShardException(path, $"metadata is not valid UTF-8 JSON: {e.Message}", e);
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new TokenShardException(path, "metadata is not a JSON object");
            if (!root.TryGetProperty("tokenizer", out var tokenizer) || tokenizer.ValueKind != JsonValueKind.String)
                throw new TokenShardException(path, "metadata has no \"tokenizer\" string");
            string tokenizerName = Text(path, tokenizer);
            if (!root.TryGetProperty("sources", out var sources) || sources.ValueKind != JsonValueKind.Array)
                throw new TokenShardException(path, "metadata has no \"sources\" array");
            var names = new List<string>();
            foreach (var source in sources.EnumerateArray())
            {
                if (source.ValueKind != JsonValueKind.String) throw new TokenShardException(path, "metadata \"sources\" holds a value that is not a string");
                names.Add(Text(path, source));
            }
            if (!root.TryGetProperty("eos_id", out var eos))
                throw new TokenShardException(path, "metadata has no \"eos_id\" (a token id or null)");
            int? eosId = null;
            if (eos.ValueKind != JsonValueKind.Null)
            {
                if (eos.ValueKind != JsonValueKind.Number || !eos.TryGetInt32(out int id))
                    throw new TokenShardException(path, $"metadata \"eos_id\" is {eos.GetRawText()}, not a token id or null");
                if (id < 0 || id >= vocabSize)
                    throw new TokenShardException(path, $"metadata \"eos_id\" {id} is outside the vocabulary [0, {vocabSize})");
                eosId = id;
            }
            return (new TokenShardMetadata(tokenizerName, names), eosId);
        }
    }

    /// <summary>A string value; half a surrogate pair (an escape such as \ud800) parses but cannot be read as text.</summary>
    private static string Text(string path, JsonElement value)
    {
        try
        {
            return value.GetString()!;
        }
        catch (InvalidOperationException e)
        {
            throw new TokenShardException(path, $"metadata string {value.GetRawText()} is not valid text: {e.Message}", e);
        }
    }
}
