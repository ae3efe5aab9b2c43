namespace DiffuSharp.Kernels.Reference;

/// <summary>Row-wise softmax in float64, with the row maximum subtracted first.</summary>
public static class Softmax
{
    public static void Forward(ReadOnlySpan<double> x, Span<double> output, int rows, int columns)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * columns, columns);
            var dst = output.Slice(r * columns, columns);
            double max = double.NegativeInfinity;
            for (int c = 0; c < columns; c++) max = Math.Max(max, row[c]);
            double sum = 0;
            for (int c = 0; c < columns; c++)
            {
                double e = Math.Exp(row[c] - max);
                dst[c] = e;
                sum += e;
            }
            for (int c = 0; c < columns; c++) dst[c] /= sum;
        }
    }
}
