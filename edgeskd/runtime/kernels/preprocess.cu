// edgeskd fused preprocessing kernel (DESIGN.md §5).
//
// uint8 frame, HWC, 3 channels (RGB or BGR), any row pitch
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

__device__ __forceinline__ bool edgeskd_sample(
    const unsigned char* __restrict__ src, int src_pitch,
    int crop_x, int crop_y, int crop_w, int crop_h, int out_w, int out_h, int swap_rb,
    float mean0, float mean1, float mean2, float std0, float std1, float std2,
    int ox, int oy, float out[3])
{
    if (ox >= out_w || oy >= out_h) return false;
    int y0, y1, x0, x1;
    float wy, wx;
    edgeskd_axis(oy, crop_h, out_h, y0, y1, wy);
    edgeskd_axis(ox, crop_w, out_w, x0, x1, wx);
    const unsigned char* r0 = src + (size_t)(crop_y + y0) * src_pitch;
    const unsigned char* r1 = src + (size_t)(crop_y + y1) * src_pitch;
    const int c0 = (crop_x + x0) * 3;
    const int c1 = (crop_x + x1) * 3;
    const float mean[3] = {mean0, mean1, mean2};
    const float stdv[3] = {std0, std1, std2};
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int ci = swap_rb ? 2 - c : c;
        float left = edgeskd_lerp((float)r0[c0 + ci], (float)r1[c0 + ci], wy);
        float right = edgeskd_lerp((float)r0[c1 + ci], (float)r1[c1 + ci], wy);
        float v = edgeskd_lerp(left, right, wx);
        out[c] = __fdiv_rn(__fsub_rn(v, mean[c]), stdv[c]);
    }
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
