// float16 for vmem's CUDA C (kernels/cuda_module.py's HALF_SOURCE, put before the
// softmax and attention sources): it travels as its bits, since NVRTC has no
// cuda_fp16.h, and is computed in float32. The conversions are the device's own
// instructions on the GPU (__CUDA_ARCH__), and the same IEEE round-to-nearest-even in
// integer arithmetic elsewhere (the CPU emulator that checks the sources' logic).
struct Half { unsigned short bits; };

__device__ __forceinline__ float half_to_float(unsigned short h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0u) {  // zero or subnormal: mant * 2^-24, exact in float32
        const float f = (float)mant * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

__device__ __forceinline__ unsigned short float_to_half(float f) {
#ifdef __CUDA_ARCH__
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    const unsigned int x = __float_as_uint(f), sign = (x >> 16) & 0x8000u;
    const unsigned int a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);  // NaN stays NaN
    if (a >= 0x47800000u) return (unsigned short)(sign | 0x7c00u);  // 2^16 and up: inf
    if (a >= 0x38800000u) {  // a normal half; a carry out of the mantissa rounds up to inf
        unsigned int h = ((a >> 23) - 112u) << 10 | ((a & 0x7fffffu) >> 13);
        const unsigned int rest = a & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    if (a < 0x33000000u) return (unsigned short)sign;  // below 2^-25: zero
    // a subnormal half, in units of 2^-24: the 24-bit significand shifted right
    const unsigned int shift = 126u - (a >> 23), m = (a & 0x7fffffu) | 0x800000u;
    unsigned int h = m >> shift;
    const unsigned int rest = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
#endif
}

