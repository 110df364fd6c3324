// edgeskd fused preprocessing kernel: one launch per frame, from the decoded frame to the engine's
// input, with the same numbers as the CPU path (edgeskd/runtime/preprocess.py).
//
// uint8 frame, HWC, 3 channels (RGB or BGR), any row pitch            (edgeskd_preprocess_f32/f16)
//   or 8-bit planar YUV (Y, U, V planes, chroma subsampled by 2^shift) (edgeskd_preprocess_yuv_f32/f16),
//   converted to RGB at the sampled pixels exactly as the CPU stream path does (coefficients from
//   yuv_to_rgb_coeffs in edgeskd/runtime/preprocess.py):
//   Y' = (Y - y_off) * y_scale, U' = U - 128, V' = V - 128, R = Y' + rv*V', G = Y' - (gu*U' + gv*V'),
//   B = Y' + bu*U', each float32 operation rounded on its own, then rint and clip to [0, 255]
//   -> optional content-area crop (x, y, w, h)
//   -> bilinear resize, half-pixel centres: src = (dst + 0.5) * in / out - 0.5, clamped to the
//      crop, no antialiasing (the convention of edgeskd/runtime/preprocess.py)
//   -> channel order (swap_rb: output channel c reads input channel 2 - c)
//   -> (x - 255 * mean[c]) / (255 * std[c])
//   -> float32 or float16, NCHW, written at dst (one image; the host offsets dst per batch index),
//      i.e. straight into the engine's input binding, on the caller's stream.
//
// Matching the CPU path bit for bit (float32 output): source coordinates and weights are computed
// in double and rounded to float exactly as numpy does; the lerps run in float32 in the CPU's
// order (rows first, then columns) with explicit round-to-nearest intrinsics, so no FMA
// contraction changes the rounding; the normalisation is an IEEE division. Compile with
// --fmad=false as well (cuda_preprocess.py does). Self-contained: no headers, so NVRTC needs no
// include path (the fp16 conversion is one PTX instruction). With EDGESKD_HOST_EMULATION defined
// (and the CUDA built-ins mapped to C++), a host C++ compiler builds the same arithmetic — the CPU
// test of the kernel's maths on machines without a GPU.

__device__ __forceinline__ void edgeskd_axis(int o, int n_in, int n_out, int& i0, int& i1, float& w1)
{
    double scale = (double)n_in / (double)n_out;
    double s = ((double)o + 0.5) * scale - 0.5;
    if (s < 0.0) s = 0.0;
    if (s > (double)(n_in - 1)) s = (double)(n_in - 1);
    double f = floor(s);
    i0 = (int)f;
    i1 = min(i0 + 1, n_in - 1);
    w1 = (float)(s - f);
}

__device__ __forceinline__ float edgeskd_lerp(float a, float b, float w)
{
    // a + (b - a) * w, each step rounded on its own (numpy's order, no fused multiply-add)
    return __fadd_rn(a, __fmul_rn(__fsub_rn(b, a), w));
}

__device__ __forceinline__ unsigned short edgeskd_f32_to_f16(float v)
{
#if defined(__CUDA_ARCH__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#elif defined(EDGESKD_HOST_EMULATION)
    // tests/test_cuda_preprocess.py runs this file's arithmetic on the CPU with a C++ compiler
    _Float16 h = (_Float16)v;
    unsigned short u;
    __builtin_memcpy(&u, &h, sizeof u);
    return u;
#else
    return 0;  // host pass of nvcc: device-only function, never called on the host
#endif
}

// taps[row][col][channel]: the four source pixels of one output pixel, as uint8-valued floats
__device__ __forceinline__ void edgeskd_finish(const float taps[2][2][3], float wy, float wx, int swap_rb,
                                               const float mean[3], const float stdv[3], float out[3])
{
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int ci = swap_rb ? 2 - c : c;
        float left = edgeskd_lerp(taps[0][0][ci], taps[1][0][ci], wy);
        float right = edgeskd_lerp(taps[0][1][ci], taps[1][1][ci], wy);
        float v = edgeskd_lerp(left, right, wx);
        out[c] = __fdiv_rn(__fsub_rn(v, mean[c]), stdv[c]);
    }
}

__device__ __forceinline__ bool edgeskd_sample(
    const unsigned char* __restrict__ src, int src_pitch,
    int crop_x, int crop_y, int crop_w, int crop_h, int out_w, int out_h, int swap_rb,
    float mean0, float mean1, float mean2, float std0, float std1, float std2,
    int ox, int oy, float out[3])
{
    if (ox >= out_w || oy >= out_h) return false;
    int ys[2], xs[2];
    float wy, wx;
    edgeskd_axis(oy, crop_h, out_h, ys[0], ys[1], wy);
    edgeskd_axis(ox, crop_w, out_w, xs[0], xs[1], wx);
    float taps[2][2][3];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const unsigned char* row = src + (size_t)(crop_y + ys[r]) * src_pitch;
#pragma unroll
        for (int q = 0; q < 2; ++q)
#pragma unroll
            for (int c = 0; c < 3; ++c) taps[r][q][c] = (float)row[(crop_x + xs[q]) * 3 + c];
    }
    const float mean[3] = {mean0, mean1, mean2};
    const float stdv[3] = {std0, std1, std2};
    edgeskd_finish(taps, wy, wx, swap_rb, mean, stdv, out);
    return true;
}

__device__ __forceinline__ float edgeskd_to_u8(float v)
{
    // np.rint (round half to even, the default rounding mode) then np.clip(0, 255)
    return fminf(fmaxf(rintf(v), 0.0f), 255.0f);
}

__device__ __forceinline__ bool edgeskd_sample_yuv(
    const unsigned char* __restrict__ y_plane, int y_pitch,
    const unsigned char* __restrict__ u_plane, int u_pitch,
    const unsigned char* __restrict__ v_plane, int v_pitch,
    int shift_x, int shift_y, const float k[6],
    int crop_x, int crop_y, int crop_w, int crop_h, int out_w, int out_h, int swap_rb,
    float mean0, float mean1, float mean2, float std0, float std1, float std2,
    int ox, int oy, float out[3])
{
    if (ox >= out_w || oy >= out_h) return false;
    int ys[2], xs[2];
    float wy, wx;
    edgeskd_axis(oy, crop_h, out_h, ys[0], ys[1], wy);
    edgeskd_axis(ox, crop_w, out_w, xs[0], xs[1], wx);
    // k = (y_off, y_scale, rv, gu, gv, bu), float32 as numpy uses them
    float taps[2][2][3];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = crop_y + ys[r];
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            const int col = crop_x + xs[q];
            float yv = __fmul_rn(__fsub_rn((float)y_plane[(size_t)row * y_pitch + col], k[0]), k[1]);
            const size_t ci = (size_t)(row >> shift_y) * u_pitch + (col >> shift_x);
            const size_t vi = (size_t)(row >> shift_y) * v_pitch + (col >> shift_x);
            float u = __fsub_rn((float)u_plane[ci], 128.0f);
            float v = __fsub_rn((float)v_plane[vi], 128.0f);
            taps[r][q][0] = edgeskd_to_u8(__fadd_rn(yv, __fmul_rn(k[2], v)));
            taps[r][q][1] = edgeskd_to_u8(__fsub_rn(yv, __fadd_rn(__fmul_rn(k[3], u), __fmul_rn(k[4], v))));
            taps[r][q][2] = edgeskd_to_u8(__fadd_rn(yv, __fmul_rn(k[5], u)));
        }
    }
    const float mean[3] = {mean0, mean1, mean2};
    const float stdv[3] = {std0, std1, std2};
    edgeskd_finish(taps, wy, wx, swap_rb, mean, stdv, out);
    return true;
}

extern "C" __global__ void edgeskd_preprocess_f32(
    const unsigned char* __restrict__ src, int src_pitch,
    int crop_x, int crop_y, int crop_w, int crop_h,
    float* __restrict__ dst, int out_w, int out_h, int swap_rb,
    float mean0, float mean1, float mean2, float std0, float std1, float std2)
{
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    float v[3];
    if (!edgeskd_sample(src, src_pitch, crop_x, crop_y, crop_w, crop_h, out_w, out_h, swap_rb,
                        mean0, mean1, mean2, std0, std1, std2, ox, oy, v)) return;
    const size_t plane = (size_t)out_w * out_h;
    const size_t i = (size_t)oy * out_w + ox;
    dst[i] = v[0];
    dst[plane + i] = v[1];
    dst[2 * plane + i] = v[2];
}

extern "C" __global__ void edgeskd_preprocess_f16(
    const unsigned char* __restrict__ src, int src_pitch,
    int crop_x, int crop_y, int crop_w, int crop_h,
    unsigned short* __restrict__ dst, int out_w, int out_h, int swap_rb,
    float mean0, float mean1, float mean2, float std0, float std1, float std2)
{
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    float v[3];
    if (!edgeskd_sample(src, src_pitch, crop_x, crop_y, crop_w, crop_h, out_w, out_h, swap_rb,
                        mean0, mean1, mean2, std0, std1, std2, ox, oy, v)) return;
    const size_t plane = (size_t)out_w * out_h;
    const size_t i = (size_t)oy * out_w + ox;
    dst[i] = edgeskd_f32_to_f16(v[0]);
    dst[plane + i] = edgeskd_f32_to_f16(v[1]);
    dst[2 * plane + i] = edgeskd_f32_to_f16(v[2]);
}

#define EDGESKD_YUV_PARAMS \
    const unsigned char* __restrict__ y_plane, int y_pitch, \
    const unsigned char* __restrict__ u_plane, int u_pitch, \
    const unsigned char* __restrict__ v_plane, int v_pitch, \
    int shift_x, int shift_y, float y_off, float y_scale, float rv, float gu, float gv, float bu, \
    int crop_x, int crop_y, int crop_w, int crop_h

#define EDGESKD_YUV_SAMPLE(v) \
    const int ox = blockIdx.x * blockDim.x + threadIdx.x; \
    const int oy = blockIdx.y * blockDim.y + threadIdx.y; \
    const float k[6] = {y_off, y_scale, rv, gu, gv, bu}; \
    float v[3]; \
    if (!edgeskd_sample_yuv(y_plane, y_pitch, u_plane, u_pitch, v_plane, v_pitch, shift_x, shift_y, k, \
                            crop_x, crop_y, crop_w, crop_h, out_w, out_h, swap_rb, \
                            mean0, mean1, mean2, std0, std1, std2, ox, oy, v)) return; \
    const size_t plane = (size_t)out_w * out_h; \
    const size_t i = (size_t)oy * out_w + ox;

extern "C" __global__ void edgeskd_preprocess_yuv_f32(
    EDGESKD_YUV_PARAMS,
    float* __restrict__ dst, int out_w, int out_h, int swap_rb,
    float mean0, float mean1, float mean2, float std0, float std1, float std2)
{
    EDGESKD_YUV_SAMPLE(v)
    dst[i] = v[0];
    dst[plane + i] = v[1];
    dst[2 * plane + i] = v[2];
}

extern "C" __global__ void edgeskd_preprocess_yuv_f16(
    EDGESKD_YUV_PARAMS,
    unsigned short* __restrict__ dst, int out_w, int out_h, int swap_rb,
    float mean0, float mean1, float mean2, float std0, float std1, float std2)
{
    EDGESKD_YUV_SAMPLE(v)
    dst[i] = edgeskd_f32_to_f16(v[0]);
    dst[plane + i] = edgeskd_f32_to_f16(v[1]);
    dst[2 * plane + i] = edgeskd_f32_to_f16(v[2]);
}
