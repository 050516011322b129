//! Host-side fuzzing of the MMIO instruction decoder
//! (`hypervisor_core::instruction`): a differential check against GNU
//! binutils, then a short, deterministic run of the fuzz body
//! ([`instruction::fuzz_decode`]) over random, exhaustive and mutated
//! inputs, so `cargo test` exercises it; coverage-guided runs wire the same
//! body into `fuzz/`.

use std::time::Instant;

use hypervisor_core::instruction::{
    self, decode, AccessSize, DecodeError, ExecutionMode, Extension, GprOperand, MmioAccess,
    RegisterPart, WriteSource, MAX_LENGTH,
};

/// Every supported form, assembled by GNU as 2.40 (`as --64` / `as --32`,
/// Intel syntax) and disassembled by `objdump -d -M intel`; the comment is
/// objdump's text and the expectation is derived from that text, not from
/// the decoder. Rows: (mode bits, bytes, expected access). The expected
/// length is the whole byte string. Regenerate with the script at the end of
/// this file.
#[rustfmt::skip]
const BINUTILS: &[(u32, &str, &str)] = &[
    (64, "88 38", "store bh 1"), // mov BYTE PTR [rax],bh
    (64, "40 8a 28", "load bpl 1 none"), // mov bpl,BYTE PTR [rax]
    (64, "c6 00 00", "store 0x0 1"), // mov BYTE PTR [rax],0x0
    (64, "66 89 18", "store bx 2"), // mov WORD PTR [rax],bx
    (64, "66 44 8b 20", "load r12w 2 none"), // mov r12w,WORD PTR [rax]
    (64, "66 c7 00 34 12", "store 0x1234 2"), // mov WORD PTR [rax],0x1234
    (64, "44 89 38", "store r15d 4"), // mov DWORD PTR [rax],r15d
    (64, "8b 20", "load esp 4 none"), // mov esp,DWORD PTR [rax]
    (64, "c7 00 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [rax],0x0
    (64, "48 89 10", "store rdx 8"), // mov QWORD PTR [rax],rdx
    (64, "48 8b 10", "load rdx 8 none"), // mov rdx,QWORD PTR [rax]
    (64, "48 c7 00 00 00 00 00", "store 0x0 8"), // mov QWORD PTR [rax],0x0
    (64, "0f b6 00", "load eax 1 zero"), // movzx eax,BYTE PTR [rax]
    (64, "4c 0f b7 20", "load r12 2 zero"), // movzx r12,WORD PTR [rax]
    (64, "44 0f be 08", "load r9d 1 sign"), // movsx r9d,BYTE PTR [rax]
    (64, "48 0f bf 08", "load rcx 2 sign"), // movsx rcx,WORD PTR [rax]
    (64, "48 63 38", "load rdi 4 sign"), // movsxd rdi,DWORD PTR [rax]
    (64, "44 88 61 10", "store r12b 1"), // mov BYTE PTR [rcx+0x10],r12b
    (64, "44 8a 69 10", "load r13b 1 none"), // mov r13b,BYTE PTR [rcx+0x10]
    (64, "c6 41 10 ff", "store 0xff 1"), // mov BYTE PTR [rcx+0x10],0xff
    (64, "66 44 89 59 10", "store r11w 2"), // mov WORD PTR [rcx+0x10],r11w
    (64, "66 44 8b 41 10", "load r8w 2 none"), // mov r8w,WORD PTR [rcx+0x10]
    (64, "66 c7 41 10 fe ff", "store 0xfffe 2"), // mov WORD PTR [rcx+0x10],0xfffe
    (64, "89 69 10", "store ebp 4"), // mov DWORD PTR [rcx+0x10],ebp
    (64, "8b 59 10", "load ebx 4 none"), // mov ebx,DWORD PTR [rcx+0x10]
    (64, "c7 41 10 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [rcx+0x10],0xfee00000
    (64, "4c 89 41 10", "store r8 8"), // mov QWORD PTR [rcx+0x10],r8
    (64, "48 8b 71 10", "load rsi 8 none"), // mov rsi,QWORD PTR [rcx+0x10]
    (64, "48 c7 41 10 fe ff ff ff", "store 0xfffffffffffffffe 8"), // mov QWORD PTR [rcx+0x10],0xfffffffffffffffe
    (64, "48 0f b6 41 10", "load rax 1 zero"), // movzx rax,BYTE PTR [rcx+0x10]
    (64, "66 44 0f b7 41 10", "load r8w 2 zero"), // movzx r8w,WORD PTR [rcx+0x10]
    (64, "4c 0f be 41 10", "load r8 1 sign"), // movsx r8,BYTE PTR [rcx+0x10]
    (64, "66 0f bf 71 10", "load si 2 sign"), // movsx si,WORD PTR [rcx+0x10]
    (64, "48 63 69 10", "load rbp 4 sign"), // movsxd rbp,DWORD PTR [rcx+0x10]
    (64, "40 88 6d 00", "store bpl 1"), // mov BYTE PTR [rbp+0x0],bpl
    (64, "40 8a 6d 00", "load bpl 1 none"), // mov bpl,BYTE PTR [rbp+0x0]
    (64, "c6 45 00 7f", "store 0x7f 1"), // mov BYTE PTR [rbp+0x0],0x7f
    (64, "66 44 89 5d 00", "store r11w 2"), // mov WORD PTR [rbp+0x0],r11w
    (64, "66 8b 55 00", "load dx 2 none"), // mov dx,WORD PTR [rbp+0x0]
    (64, "66 c7 45 00 34 12", "store 0x1234 2"), // mov WORD PTR [rbp+0x0],0x1234
    (64, "44 89 55 00", "store r10d 4"), // mov DWORD PTR [rbp+0x0],r10d
    (64, "44 8b 65 00", "load r12d 4 none"), // mov r12d,DWORD PTR [rbp+0x0]
    (64, "c7 45 00 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR [rbp+0x0],0xffffffff
    (64, "48 89 7d 00", "store rdi 8"), // mov QWORD PTR [rbp+0x0],rdi
    (64, "48 8b 6d 00", "load rbp 8 none"), // mov rbp,QWORD PTR [rbp+0x0]
    (64, "48 c7 45 00 ff ff ff 7f", "store 0x7fffffff 8"), // mov QWORD PTR [rbp+0x0],0x7fffffff
    (64, "66 0f b6 7d 00", "load di 1 zero"), // movzx di,BYTE PTR [rbp+0x0]
    (64, "44 0f b7 7d 00", "load r15d 2 zero"), // movzx r15d,WORD PTR [rbp+0x0]
    (64, "66 44 0f be 45 00", "load r8w 1 sign"), // movsx r8w,BYTE PTR [rbp+0x0]
    (64, "0f bf 55 00", "load edx 2 sign"), // movsx edx,WORD PTR [rbp+0x0]
    (64, "4c 63 4d 00", "load r9 4 sign"), // movsxd r9,DWORD PTR [rbp+0x0]
    (64, "88 04 24", "store al 1"), // mov BYTE PTR [rsp],al
    (64, "40 8a 2c 24", "load bpl 1 none"), // mov bpl,BYTE PTR [rsp]
    (64, "c6 04 24 00", "store 0x0 1"), // mov BYTE PTR [rsp],0x0
    (64, "66 44 89 0c 24", "store r9w 2"), // mov WORD PTR [rsp],r9w
    (64, "66 8b 34 24", "load si 2 none"), // mov si,WORD PTR [rsp]
    (64, "66 c7 04 24 fe ff", "store 0xfffe 2"), // mov WORD PTR [rsp],0xfffe
    (64, "44 89 2c 24", "store r13d 4"), // mov DWORD PTR [rsp],r13d
    (64, "44 8b 2c 24", "load r13d 4 none"), // mov r13d,DWORD PTR [rsp]
    (64, "c7 04 24 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [rsp],0x0
    (64, "4c 89 0c 24", "store r9 8"), // mov QWORD PTR [rsp],r9
    (64, "4c 8b 2c 24", "load r13 8 none"), // mov r13,QWORD PTR [rsp]
    (64, "48 c7 04 24 00 00 00 00", "store 0x0 8"), // mov QWORD PTR [rsp],0x0
    (64, "44 0f b6 34 24", "load r14d 1 zero"), // movzx r14d,BYTE PTR [rsp]
    (64, "48 0f b7 2c 24", "load rbp 2 zero"), // movzx rbp,WORD PTR [rsp]
    (64, "0f be 3c 24", "load edi 1 sign"), // movsx edi,BYTE PTR [rsp]
    (64, "4c 0f bf 0c 24", "load r9 2 sign"), // movsx r9,WORD PTR [rsp]
    (64, "4c 63 04 24", "load r8 4 sign"), // movsxd r8,DWORD PTR [rsp]
    (64, "41 88 0c 24", "store cl 1"), // mov BYTE PTR [r12],cl
    (64, "41 8a 14 24", "load dl 1 none"), // mov dl,BYTE PTR [r12]
    (64, "41 c6 04 24 ff", "store 0xff 1"), // mov BYTE PTR [r12],0xff
    (64, "66 41 89 0c 24", "store cx 2"), // mov WORD PTR [r12],cx
    (64, "66 45 8b 34 24", "load r14w 2 none"), // mov r14w,WORD PTR [r12]
    (64, "66 41 c7 04 24 34 12", "store 0x1234 2"), // mov WORD PTR [r12],0x1234
    (64, "45 89 04 24", "store r8d 4"), // mov DWORD PTR [r12],r8d
    (64, "45 8b 3c 24", "load r15d 4 none"), // mov r15d,DWORD PTR [r12]
    (64, "41 c7 04 24 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [r12],0xfee00000
    (64, "4d 89 14 24", "store r10 8"), // mov QWORD PTR [r12],r10
    (64, "49 8b 24 24", "load rsp 8 none"), // mov rsp,QWORD PTR [r12]
    (64, "49 c7 04 24 fe ff ff ff", "store 0xfffffffffffffffe 8"), // mov QWORD PTR [r12],0xfffffffffffffffe
    (64, "49 0f b6 34 24", "load rsi 1 zero"), // movzx rsi,BYTE PTR [r12]
    (64, "66 41 0f b7 14 24", "load dx 2 zero"), // movzx dx,WORD PTR [r12]
    (64, "4d 0f be 2c 24", "load r13 1 sign"), // movsx r13,BYTE PTR [r12]
    (64, "66 41 0f bf 34 24", "load si 2 sign"), // movsx si,WORD PTR [r12]
    (64, "4d 63 34 24", "load r14 4 sign"), // movsxd r14,DWORD PTR [r12]
    (64, "41 88 65 00", "store spl 1"), // mov BYTE PTR [r13+0x0],spl
    (64, "41 c6 45 00 7f", "store 0x7f 1"), // mov BYTE PTR [r13+0x0],0x7f
    (64, "66 45 89 5d 00", "store r11w 2"), // mov WORD PTR [r13+0x0],r11w
    (64, "66 45 8b 6d 00", "load r13w 2 none"), // mov r13w,WORD PTR [r13+0x0]
    (64, "66 41 c7 45 00 fe ff", "store 0xfffe 2"), // mov WORD PTR [r13+0x0],0xfffe
    (64, "45 89 55 00", "store r10d 4"), // mov DWORD PTR [r13+0x0],r10d
    (64, "41 8b 75 00", "load esi 4 none"), // mov esi,DWORD PTR [r13+0x0]
    (64, "41 c7 45 00 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR [r13+0x0],0xffffffff
    (64, "4d 89 55 00", "store r10 8"), // mov QWORD PTR [r13+0x0],r10
    (64, "49 8b 5d 00", "load rbx 8 none"), // mov rbx,QWORD PTR [r13+0x0]
    (64, "49 c7 45 00 ff ff ff 7f", "store 0x7fffffff 8"), // mov QWORD PTR [r13+0x0],0x7fffffff
    (64, "66 41 0f b6 4d 00", "load cx 1 zero"), // movzx cx,BYTE PTR [r13+0x0]
    (64, "41 0f b7 7d 00", "load edi 2 zero"), // movzx edi,WORD PTR [r13+0x0]
    (64, "66 45 0f be 45 00", "load r8w 1 sign"), // movsx r8w,BYTE PTR [r13+0x0]
    (64, "41 0f bf 7d 00", "load edi 2 sign"), // movsx edi,WORD PTR [r13+0x0]
    (64, "49 63 5d 00", "load rbx 4 sign"), // movsxd rbx,DWORD PTR [r13+0x0]
    (64, "40 88 b4 24 80 00 00 00", "store sil 1"), // mov BYTE PTR [rsp+0x80],sil
    (64, "8a ac 24 80 00 00 00", "load ch 1 none"), // mov ch,BYTE PTR [rsp+0x80]
    (64, "c6 84 24 80 00 00 00 00", "store 0x0 1"), // mov BYTE PTR [rsp+0x80],0x0
    (64, "66 44 89 8c 24 80 00 00 00", "store r9w 2"), // mov WORD PTR [rsp+0x80],r9w
    (64, "66 44 8b b4 24 80 00 00 00", "load r14w 2 none"), // mov r14w,WORD PTR [rsp+0x80]
    (64, "66 c7 84 24 80 00 00 00 34 12", "store 0x1234 2"), // mov WORD PTR [rsp+0x80],0x1234
    (64, "89 84 24 80 00 00 00", "store eax 4"), // mov DWORD PTR [rsp+0x80],eax
    (64, "8b 8c 24 80 00 00 00", "load ecx 4 none"), // mov ecx,DWORD PTR [rsp+0x80]
    (64, "c7 84 24 80 00 00 00 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [rsp+0x80],0x0
    (64, "4c 89 9c 24 80 00 00 00", "store r11 8"), // mov QWORD PTR [rsp+0x80],r11
    (64, "48 8b 94 24 80 00 00 00", "load rdx 8 none"), // mov rdx,QWORD PTR [rsp+0x80]
    (64, "48 c7 84 24 80 00 00 00 00 00 00 00", "store 0x0 8"), // mov QWORD PTR [rsp+0x80],0x0
    (64, "44 0f b6 8c 24 80 00 00 00", "load r9d 1 zero"), // movzx r9d,BYTE PTR [rsp+0x80]
    (64, "4c 0f b7 94 24 80 00 00 00", "load r10 2 zero"), // movzx r10,WORD PTR [rsp+0x80]
    (64, "0f be 84 24 80 00 00 00", "load eax 1 sign"), // movsx eax,BYTE PTR [rsp+0x80]
    (64, "4c 0f bf 94 24 80 00 00 00", "load r10 2 sign"), // movsx r10,WORD PTR [rsp+0x80]
    (64, "4c 63 8c 24 80 00 00 00", "load r9 4 sign"), // movsxd r9,DWORD PTR [rsp+0x80]
    (64, "40 88 34 4b", "store sil 1"), // mov BYTE PTR [rbx+rcx*2],sil
    (64, "8a 24 4b", "load ah 1 none"), // mov ah,BYTE PTR [rbx+rcx*2]
    (64, "c6 04 4b ff", "store 0xff 1"), // mov BYTE PTR [rbx+rcx*2],0xff
    (64, "66 44 89 2c 4b", "store r13w 2"), // mov WORD PTR [rbx+rcx*2],r13w
    (64, "66 8b 14 4b", "load dx 2 none"), // mov dx,WORD PTR [rbx+rcx*2]
    (64, "66 c7 04 4b fe ff", "store 0xfffe 2"), // mov WORD PTR [rbx+rcx*2],0xfffe
    (64, "44 89 0c 4b", "store r9d 4"), // mov DWORD PTR [rbx+rcx*2],r9d
    (64, "8b 34 4b", "load esi 4 none"), // mov esi,DWORD PTR [rbx+rcx*2]
    (64, "c7 04 4b 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [rbx+rcx*2],0xfee00000
    (64, "4c 89 34 4b", "store r14 8"), // mov QWORD PTR [rbx+rcx*2],r14
    (64, "4c 8b 0c 4b", "load r9 8 none"), // mov r9,QWORD PTR [rbx+rcx*2]
    (64, "48 c7 04 4b fe ff ff ff", "store 0xfffffffffffffffe 8"), // mov QWORD PTR [rbx+rcx*2],0xfffffffffffffffe
    (64, "48 0f b6 24 4b", "load rsp 1 zero"), // movzx rsp,BYTE PTR [rbx+rcx*2]
    (64, "66 44 0f b7 04 4b", "load r8w 2 zero"), // movzx r8w,WORD PTR [rbx+rcx*2]
    (64, "4c 0f be 24 4b", "load r12 1 sign"), // movsx r12,BYTE PTR [rbx+rcx*2]
    (64, "66 0f bf 2c 4b", "load bp 2 sign"), // movsx bp,WORD PTR [rbx+rcx*2]
    (64, "4c 63 14 4b", "load r10 4 sign"), // movsxd r10,DWORD PTR [rbx+rcx*2]
    (64, "46 88 74 ed 80", "store r14b 1"), // mov BYTE PTR [rbp+r13*8-0x80],r14b
    (64, "42 8a 44 ed 80", "load al 1 none"), // mov al,BYTE PTR [rbp+r13*8-0x80]
    (64, "42 c6 44 ed 80 7f", "store 0x7f 1"), // mov BYTE PTR [rbp+r13*8-0x80],0x7f
    (64, "66 46 89 5c ed 80", "store r11w 2"), // mov WORD PTR [rbp+r13*8-0x80],r11w
    (64, "66 42 8b 4c ed 80", "load cx 2 none"), // mov cx,WORD PTR [rbp+r13*8-0x80]
    (64, "66 42 c7 44 ed 80 34 12", "store 0x1234 2"), // mov WORD PTR [rbp+r13*8-0x80],0x1234
    (64, "46 89 74 ed 80", "store r14d 4"), // mov DWORD PTR [rbp+r13*8-0x80],r14d
    (64, "42 8b 6c ed 80", "load ebp 4 none"), // mov ebp,DWORD PTR [rbp+r13*8-0x80]
    (64, "42 c7 44 ed 80 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR [rbp+r13*8-0x80],0xffffffff
    (64, "4e 89 5c ed 80", "store r11 8"), // mov QWORD PTR [rbp+r13*8-0x80],r11
    (64, "4e 8b 5c ed 80", "load r11 8 none"), // mov r11,QWORD PTR [rbp+r13*8-0x80]
    (64, "4a c7 44 ed 80 ff ff ff 7f", "store 0x7fffffff 8"), // mov QWORD PTR [rbp+r13*8-0x80],0x7fffffff
    (64, "66 46 0f b6 4c ed 80", "load r9w 1 zero"), // movzx r9w,BYTE PTR [rbp+r13*8-0x80]
    (64, "42 0f b7 5c ed 80", "load ebx 2 zero"), // movzx ebx,WORD PTR [rbp+r13*8-0x80]
    (64, "66 46 0f be 74 ed 80", "load r14w 1 sign"), // movsx r14w,BYTE PTR [rbp+r13*8-0x80]
    (64, "42 0f bf 74 ed 80", "load esi 2 sign"), // movsx esi,WORD PTR [rbp+r13*8-0x80]
    (64, "4e 63 6c ed 80", "load r13 4 sign"), // movsxd r13,DWORD PTR [rbp+r13*8-0x80]
    (64, "43 8a 9c b4 78 56 34 12", "load bl 1 none"), // mov bl,BYTE PTR [r12+r14*4+0x12345678]
    (64, "43 c6 84 b4 78 56 34 12 00", "store 0x0 1"), // mov BYTE PTR [r12+r14*4+0x12345678],0x0
    (64, "66 43 89 8c b4 78 56 34 12", "store cx 2"), // mov WORD PTR [r12+r14*4+0x12345678],cx
    (64, "66 43 8b 8c b4 78 56 34 12", "load cx 2 none"), // mov cx,WORD PTR [r12+r14*4+0x12345678]
    (64, "66 43 c7 84 b4 78 56 34 12 fe ff", "store 0xfffe 2"), // mov WORD PTR [r12+r14*4+0x12345678],0xfffe
    (64, "43 89 8c b4 78 56 34 12", "store ecx 4"), // mov DWORD PTR [r12+r14*4+0x12345678],ecx
    (64, "43 8b ac b4 78 56 34 12", "load ebp 4 none"), // mov ebp,DWORD PTR [r12+r14*4+0x12345678]
    (64, "43 c7 84 b4 78 56 34 12 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [r12+r14*4+0x12345678],0x0
    (64, "4b 89 a4 b4 78 56 34 12", "store rsp 8"), // mov QWORD PTR [r12+r14*4+0x12345678],rsp
    (64, "4b 8b 8c b4 78 56 34 12", "load rcx 8 none"), // mov rcx,QWORD PTR [r12+r14*4+0x12345678]
    (64, "4b c7 84 b4 78 56 34 12 00 00 00 00", "store 0x0 8"), // mov QWORD PTR [r12+r14*4+0x12345678],0x0
    (64, "47 0f b6 bc b4 78 56 34 12", "load r15d 1 zero"), // movzx r15d,BYTE PTR [r12+r14*4+0x12345678]
    (64, "4b 0f b7 bc b4 78 56 34 12", "load rdi 2 zero"), // movzx rdi,WORD PTR [r12+r14*4+0x12345678]
    (64, "47 0f be 94 b4 78 56 34 12", "load r10d 1 sign"), // movsx r10d,BYTE PTR [r12+r14*4+0x12345678]
    (64, "4b 0f bf 8c b4 78 56 34 12", "load rcx 2 sign"), // movsx rcx,WORD PTR [r12+r14*4+0x12345678]
    (64, "4b 63 9c b4 78 56 34 12", "load rbx 4 sign"), // movsxd rbx,DWORD PTR [r12+r14*4+0x12345678]
    (64, "44 88 25 00 01 00 00", "store r12b 1"), // mov BYTE PTR [rip+0x100],r12b
    (64, "40 8a 2d 00 01 00 00", "load bpl 1 none"), // mov bpl,BYTE PTR [rip+0x100]
    (64, "c6 05 00 01 00 00 ff", "store 0xff 1"), // mov BYTE PTR [rip+0x100],0xff
    (64, "66 44 89 2d 00 01 00 00", "store r13w 2"), // mov WORD PTR [rip+0x100],r13w
    (64, "66 8b 35 00 01 00 00", "load si 2 none"), // mov si,WORD PTR [rip+0x100]
    (64, "66 c7 05 00 01 00 00 34 12", "store 0x1234 2"), // mov WORD PTR [rip+0x100],0x1234
    (64, "44 89 3d 00 01 00 00", "store r15d 4"), // mov DWORD PTR [rip+0x100],r15d
    (64, "8b 35 00 01 00 00", "load esi 4 none"), // mov esi,DWORD PTR [rip+0x100]
    (64, "c7 05 00 01 00 00 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [rip+0x100],0xfee00000
    (64, "48 89 3d 00 01 00 00", "store rdi 8"), // mov QWORD PTR [rip+0x100],rdi
    (64, "4c 8b 35 00 01 00 00", "load r14 8 none"), // mov r14,QWORD PTR [rip+0x100]
    (64, "48 c7 05 00 01 00 00 fe ff ff ff", "store 0xfffffffffffffffe 8"), // mov QWORD PTR [rip+0x100],0xfffffffffffffffe
    (64, "4c 0f b6 2d 00 01 00 00", "load r13 1 zero"), // movzx r13,BYTE PTR [rip+0x100]
    (64, "66 44 0f b7 3d 00 01 00 00", "load r15w 2 zero"), // movzx r15w,WORD PTR [rip+0x100]
    (64, "48 0f be 0d 00 01 00 00", "load rcx 1 sign"), // movsx rcx,BYTE PTR [rip+0x100]
    (64, "66 0f bf 3d 00 01 00 00", "load di 2 sign"), // movsx di,WORD PTR [rip+0x100]
    (64, "4c 63 2d 00 01 00 00", "load r13 4 sign"), // movsxd r13,DWORD PTR [rip+0x100]
    (64, "44 88 14 25 b0 b0 5f ff", "store r10b 1"), // mov BYTE PTR ds:0xffffffffff5fb0b0,r10b
    (64, "8a 3c 25 b0 b0 5f ff", "load bh 1 none"), // mov bh,BYTE PTR ds:0xffffffffff5fb0b0
    (64, "c6 04 25 b0 b0 5f ff 7f", "store 0x7f 1"), // mov BYTE PTR ds:0xffffffffff5fb0b0,0x7f
    (64, "66 44 89 2c 25 b0 b0 5f ff", "store r13w 2"), // mov WORD PTR ds:0xffffffffff5fb0b0,r13w
    (64, "66 8b 34 25 b0 b0 5f ff", "load si 2 none"), // mov si,WORD PTR ds:0xffffffffff5fb0b0
    (64, "66 c7 04 25 b0 b0 5f ff fe ff", "store 0xfffe 2"), // mov WORD PTR ds:0xffffffffff5fb0b0,0xfffe
    (64, "44 89 3c 25 b0 b0 5f ff", "store r15d 4"), // mov DWORD PTR ds:0xffffffffff5fb0b0,r15d
    (64, "8b 34 25 b0 b0 5f ff", "load esi 4 none"), // mov esi,DWORD PTR ds:0xffffffffff5fb0b0
    (64, "c7 04 25 b0 b0 5f ff ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR ds:0xffffffffff5fb0b0,0xffffffff
    (64, "48 89 0c 25 b0 b0 5f ff", "store rcx 8"), // mov QWORD PTR ds:0xffffffffff5fb0b0,rcx
    (64, "48 8b 0c 25 b0 b0 5f ff", "load rcx 8 none"), // mov rcx,QWORD PTR ds:0xffffffffff5fb0b0
    (64, "48 c7 04 25 b0 b0 5f ff ff ff ff 7f", "store 0x7fffffff 8"), // mov QWORD PTR ds:0xffffffffff5fb0b0,0x7fffffff
    (64, "66 44 0f b6 04 25 b0 b0 5f ff", "load r8w 1 zero"), // movzx r8w,BYTE PTR ds:0xffffffffff5fb0b0
    (64, "44 0f b7 04 25 b0 b0 5f ff", "load r8d 2 zero"), // movzx r8d,WORD PTR ds:0xffffffffff5fb0b0
    (64, "66 0f be 3c 25 b0 b0 5f ff", "load di 1 sign"), // movsx di,BYTE PTR ds:0xffffffffff5fb0b0
    (64, "0f bf 34 25 b0 b0 5f ff", "load esi 2 sign"), // movsx esi,WORD PTR ds:0xffffffffff5fb0b0
    (64, "48 63 3c 25 b0 b0 5f ff", "load rdi 4 sign"), // movsxd rdi,DWORD PTR ds:0xffffffffff5fb0b0
    (64, "44 88 0c c5 00 10 00 00", "store r9b 1"), // mov BYTE PTR [rax*8+0x1000],r9b
    (64, "40 8a 24 c5 00 10 00 00", "load spl 1 none"), // mov spl,BYTE PTR [rax*8+0x1000]
    (64, "c6 04 c5 00 10 00 00 00", "store 0x0 1"), // mov BYTE PTR [rax*8+0x1000],0x0
    (64, "66 89 24 c5 00 10 00 00", "store sp 2"), // mov WORD PTR [rax*8+0x1000],sp
    (64, "66 44 8b 14 c5 00 10 00 00", "load r10w 2 none"), // mov r10w,WORD PTR [rax*8+0x1000]
    (64, "66 c7 04 c5 00 10 00 00 34 12", "store 0x1234 2"), // mov WORD PTR [rax*8+0x1000],0x1234
    (64, "89 0c c5 00 10 00 00", "store ecx 4"), // mov DWORD PTR [rax*8+0x1000],ecx
    (64, "44 8b 14 c5 00 10 00 00", "load r10d 4 none"), // mov r10d,DWORD PTR [rax*8+0x1000]
    (64, "c7 04 c5 00 10 00 00 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [rax*8+0x1000],0x0
    (64, "48 89 1c c5 00 10 00 00", "store rbx 8"), // mov QWORD PTR [rax*8+0x1000],rbx
    (64, "4c 8b 24 c5 00 10 00 00", "load r12 8 none"), // mov r12,QWORD PTR [rax*8+0x1000]
    (64, "48 c7 04 c5 00 10 00 00 00 00 00 00", "store 0x0 8"), // mov QWORD PTR [rax*8+0x1000],0x0
    (64, "0f b6 0c c5 00 10 00 00", "load ecx 1 zero"), // movzx ecx,BYTE PTR [rax*8+0x1000]
    (64, "4c 0f b7 3c c5 00 10 00 00", "load r15 2 zero"), // movzx r15,WORD PTR [rax*8+0x1000]
    (64, "44 0f be 24 c5 00 10 00 00", "load r12d 1 sign"), // movsx r12d,BYTE PTR [rax*8+0x1000]
    (64, "48 0f bf 14 c5 00 10 00 00", "load rdx 2 sign"), // movsx rdx,WORD PTR [rax*8+0x1000]
    (64, "4c 63 2c c5 00 10 00 00", "load r13 4 sign"), // movsxd r13,DWORD PTR [rax*8+0x1000]
    (64, "64 88 70 08", "store dh 1"), // mov BYTE PTR fs:[rax+0x8],dh
    (64, "64 44 8a 70 08", "load r14b 1 none"), // mov r14b,BYTE PTR fs:[rax+0x8]
    (64, "64 c6 40 08 ff", "store 0xff 1"), // mov BYTE PTR fs:[rax+0x8],0xff
    (64, "64 66 89 68 08", "store bp 2"), // mov WORD PTR fs:[rax+0x8],bp
    (64, "64 66 44 8b 50 08", "load r10w 2 none"), // mov r10w,WORD PTR fs:[rax+0x8]
    (64, "64 66 c7 40 08 fe ff", "store 0xfffe 2"), // mov WORD PTR fs:[rax+0x8],0xfffe
    (64, "64 44 89 48 08", "store r9d 4"), // mov DWORD PTR fs:[rax+0x8],r9d
    (64, "64 44 8b 78 08", "load r15d 4 none"), // mov r15d,DWORD PTR fs:[rax+0x8]
    (64, "64 c7 40 08 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR fs:[rax+0x8],0xfee00000
    (64, "64 4c 89 50 08", "store r10 8"), // mov QWORD PTR fs:[rax+0x8],r10
    (64, "64 4c 8b 68 08", "load r13 8 none"), // mov r13,QWORD PTR fs:[rax+0x8]
    (64, "64 48 c7 40 08 fe ff ff ff", "store 0xfffffffffffffffe 8"), // mov QWORD PTR fs:[rax+0x8],0xfffffffffffffffe
    (64, "64 48 0f b6 70 08", "load rsi 1 zero"), // movzx rsi,BYTE PTR fs:[rax+0x8]
    (64, "64 66 44 0f b7 40 08", "load r8w 2 zero"), // movzx r8w,WORD PTR fs:[rax+0x8]
    (64, "64 4c 0f be 50 08", "load r10 1 sign"), // movsx r10,BYTE PTR fs:[rax+0x8]
    (64, "64 66 44 0f bf 60 08", "load r12w 2 sign"), // movsx r12w,WORD PTR fs:[rax+0x8]
    (64, "64 4c 63 78 08", "load r15 4 sign"), // movsxd r15,DWORD PTR fs:[rax+0x8]
    (64, "65 88 14 25 10 00 00 00", "store dl 1"), // mov BYTE PTR gs:0x10,dl
    (64, "65 40 8a 24 25 10 00 00 00", "load spl 1 none"), // mov spl,BYTE PTR gs:0x10
    (64, "65 c6 04 25 10 00 00 00 7f", "store 0x7f 1"), // mov BYTE PTR gs:0x10,0x7f
    (64, "65 66 89 34 25 10 00 00 00", "store si 2"), // mov WORD PTR gs:0x10,si
    (64, "65 66 8b 0c 25 10 00 00 00", "load cx 2 none"), // mov cx,WORD PTR gs:0x10
    (64, "65 66 c7 04 25 10 00 00 00 34 12", "store 0x1234 2"), // mov WORD PTR gs:0x10,0x1234
    (64, "65 44 89 24 25 10 00 00 00", "store r12d 4"), // mov DWORD PTR gs:0x10,r12d
    (64, "65 8b 24 25 10 00 00 00", "load esp 4 none"), // mov esp,DWORD PTR gs:0x10
    (64, "65 c7 04 25 10 00 00 00 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR gs:0x10,0xffffffff
    (64, "65 4c 89 04 25 10 00 00 00", "store r8 8"), // mov QWORD PTR gs:0x10,r8
    (64, "65 48 8b 0c 25 10 00 00 00", "load rcx 8 none"), // mov rcx,QWORD PTR gs:0x10
    (64, "65 48 c7 04 25 10 00 00 00 ff ff ff 7f", "store 0x7fffffff 8"), // mov QWORD PTR gs:0x10,0x7fffffff
    (64, "65 66 0f b6 2c 25 10 00 00 00", "load bp 1 zero"), // movzx bp,BYTE PTR gs:0x10
    (64, "65 44 0f b7 34 25 10 00 00 00", "load r14d 2 zero"), // movzx r14d,WORD PTR gs:0x10
    (64, "65 66 44 0f be 3c 25 10 00 00 00", "load r15w 1 sign"), // movsx r15w,BYTE PTR gs:0x10
    (64, "65 44 0f bf 24 25 10 00 00 00", "load r12d 2 sign"), // movsx r12d,WORD PTR gs:0x10
    (64, "65 4c 63 24 25 10 00 00 00", "load r12 4 sign"), // movsxd r12,DWORD PTR gs:0x10
    (64, "67 88 30", "store dh 1"), // mov BYTE PTR [eax],dh
    (64, "67 8a 00", "load al 1 none"), // mov al,BYTE PTR [eax]
    (64, "67 c6 00 00", "store 0x0 1"), // mov BYTE PTR [eax],0x0
    (64, "67 66 89 30", "store si 2"), // mov WORD PTR [eax],si
    (64, "67 66 8b 28", "load bp 2 none"), // mov bp,WORD PTR [eax]
    (64, "67 66 c7 00 fe ff", "store 0xfffe 2"), // mov WORD PTR [eax],0xfffe
    (64, "67 89 00", "store eax 4"), // mov DWORD PTR [eax],eax
    (64, "67 44 8b 00", "load r8d 4 none"), // mov r8d,DWORD PTR [eax]
    (64, "67 c7 00 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [eax],0x0
    (64, "67 48 89 18", "store rbx 8"), // mov QWORD PTR [eax],rbx
    (64, "67 4c 8b 20", "load r12 8 none"), // mov r12,QWORD PTR [eax]
    (64, "67 48 c7 00 00 00 00 00", "store 0x0 8"), // mov QWORD PTR [eax],0x0
    (64, "67 44 0f b6 20", "load r12d 1 zero"), // movzx r12d,BYTE PTR [eax]
    (64, "67 48 0f b7 38", "load rdi 2 zero"), // movzx rdi,WORD PTR [eax]
    (64, "67 0f be 08", "load ecx 1 sign"), // movsx ecx,BYTE PTR [eax]
    (64, "67 48 0f bf 30", "load rsi 2 sign"), // movsx rsi,WORD PTR [eax]
    (64, "67 48 63 28", "load rbp 4 sign"), // movsxd rbp,DWORD PTR [eax]
    (64, "67 44 88 7c b5 10", "store r15b 1"), // mov BYTE PTR [ebp+esi*4+0x10],r15b
    (64, "67 40 8a 74 b5 10", "load sil 1 none"), // mov sil,BYTE PTR [ebp+esi*4+0x10]
    (64, "67 c6 44 b5 10 ff", "store 0xff 1"), // mov BYTE PTR [ebp+esi*4+0x10],0xff
    (64, "67 66 44 89 7c b5 10", "store r15w 2"), // mov WORD PTR [ebp+esi*4+0x10],r15w
    (64, "67 66 44 8b 74 b5 10", "load r14w 2 none"), // mov r14w,WORD PTR [ebp+esi*4+0x10]
    (64, "67 66 c7 44 b5 10 34 12", "store 0x1234 2"), // mov WORD PTR [ebp+esi*4+0x10],0x1234
    (64, "67 89 44 b5 10", "store eax 4"), // mov DWORD PTR [ebp+esi*4+0x10],eax
    (64, "67 8b 54 b5 10", "load edx 4 none"), // mov edx,DWORD PTR [ebp+esi*4+0x10]
    (64, "67 c7 44 b5 10 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [ebp+esi*4+0x10],0xfee00000
    (64, "67 48 89 4c b5 10", "store rcx 8"), // mov QWORD PTR [ebp+esi*4+0x10],rcx
    (64, "67 48 8b 5c b5 10", "load rbx 8 none"), // mov rbx,QWORD PTR [ebp+esi*4+0x10]
    (64, "67 48 c7 44 b5 10 fe ff ff ff", "store 0xfffffffffffffffe 8"), // mov QWORD PTR [ebp+esi*4+0x10],0xfffffffffffffffe
    (64, "67 4c 0f b6 7c b5 10", "load r15 1 zero"), // movzx r15,BYTE PTR [ebp+esi*4+0x10]
    (64, "67 66 44 0f b7 44 b5 10", "load r8w 2 zero"), // movzx r8w,WORD PTR [ebp+esi*4+0x10]
    (64, "67 48 0f be 64 b5 10", "load rsp 1 sign"), // movsx rsp,BYTE PTR [ebp+esi*4+0x10]
    (64, "67 66 0f bf 4c b5 10", "load cx 2 sign"), // movsx cx,WORD PTR [ebp+esi*4+0x10]
    (64, "67 4c 63 5c b5 10", "load r11 4 sign"), // movsxd r11,DWORD PTR [ebp+esi*4+0x10]
    (64, "67 41 88 55 20", "store dl 1"), // mov BYTE PTR [r13d+0x20],dl
    (64, "67 45 8a 65 20", "load r12b 1 none"), // mov r12b,BYTE PTR [r13d+0x20]
    (64, "67 41 c6 45 20 7f", "store 0x7f 1"), // mov BYTE PTR [r13d+0x20],0x7f
    (64, "67 66 41 89 45 20", "store ax 2"), // mov WORD PTR [r13d+0x20],ax
    (64, "67 66 45 8b 4d 20", "load r9w 2 none"), // mov r9w,WORD PTR [r13d+0x20]
    (64, "67 66 41 c7 45 20 fe ff", "store 0xfffe 2"), // mov WORD PTR [r13d+0x20],0xfffe
    (64, "67 45 89 5d 20", "store r11d 4"), // mov DWORD PTR [r13d+0x20],r11d
    (64, "67 41 8b 55 20", "load edx 4 none"), // mov edx,DWORD PTR [r13d+0x20]
    (64, "67 41 c7 45 20 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR [r13d+0x20],0xffffffff
    (64, "67 49 89 55 20", "store rdx 8"), // mov QWORD PTR [r13d+0x20],rdx
    (64, "67 4d 8b 75 20", "load r14 8 none"), // mov r14,QWORD PTR [r13d+0x20]
    (64, "67 49 c7 45 20 ff ff ff 7f", "store 0x7fffffff 8"), // mov QWORD PTR [r13d+0x20],0x7fffffff
    (64, "67 66 45 0f b6 65 20", "load r12w 1 zero"), // movzx r12w,BYTE PTR [r13d+0x20]
    (64, "67 41 0f b7 75 20", "load esi 2 zero"), // movzx esi,WORD PTR [r13d+0x20]
    (64, "67 66 45 0f be 4d 20", "load r9w 1 sign"), // movsx r9w,BYTE PTR [r13d+0x20]
    (64, "67 45 0f bf 65 20", "load r12d 2 sign"), // movsx r12d,WORD PTR [r13d+0x20]
    (64, "67 49 63 7d 20", "load rdi 4 sign"), // movsxd rdi,DWORD PTR [r13d+0x20]
    (64, "67 45 88 1c 24", "store r11b 1"), // mov BYTE PTR [r12d],r11b
    (64, "67 45 8a 04 24", "load r8b 1 none"), // mov r8b,BYTE PTR [r12d]
    (64, "67 41 c6 04 24 00", "store 0x0 1"), // mov BYTE PTR [r12d],0x0
    (64, "67 66 41 89 1c 24", "store bx 2"), // mov WORD PTR [r12d],bx
    (64, "67 66 41 8b 14 24", "load dx 2 none"), // mov dx,WORD PTR [r12d]
    (64, "67 66 41 c7 04 24 34 12", "store 0x1234 2"), // mov WORD PTR [r12d],0x1234
    (64, "67 41 89 1c 24", "store ebx 4"), // mov DWORD PTR [r12d],ebx
    (64, "67 45 8b 1c 24", "load r11d 4 none"), // mov r11d,DWORD PTR [r12d]
    (64, "67 41 c7 04 24 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [r12d],0x0
    (64, "67 4d 89 2c 24", "store r13 8"), // mov QWORD PTR [r12d],r13
    (64, "67 4d 8b 2c 24", "load r13 8 none"), // mov r13,QWORD PTR [r12d]
    (64, "67 49 c7 04 24 00 00 00 00", "store 0x0 8"), // mov QWORD PTR [r12d],0x0
    (64, "67 45 0f b6 34 24", "load r14d 1 zero"), // movzx r14d,BYTE PTR [r12d]
    (64, "67 49 0f b7 14 24", "load rdx 2 zero"), // movzx rdx,WORD PTR [r12d]
    (64, "67 41 0f be 34 24", "load esi 1 sign"), // movsx esi,BYTE PTR [r12d]
    (64, "67 4d 0f bf 0c 24", "load r9 2 sign"), // movsx r9,WORD PTR [r12d]
    (64, "67 4d 63 3c 24", "load r15 4 sign"), // movsxd r15,DWORD PTR [r12d]
    (64, "67 44 88 4c 24 fc", "store r9b 1"), // mov BYTE PTR [esp-0x4],r9b
    (64, "67 8a 5c 24 fc", "load bl 1 none"), // mov bl,BYTE PTR [esp-0x4]
    (64, "67 c6 44 24 fc ff", "store 0xff 1"), // mov BYTE PTR [esp-0x4],0xff
    (64, "67 66 89 6c 24 fc", "store bp 2"), // mov WORD PTR [esp-0x4],bp
    (64, "67 66 44 8b 5c 24 fc", "load r11w 2 none"), // mov r11w,WORD PTR [esp-0x4]
    (64, "67 66 c7 44 24 fc fe ff", "store 0xfffe 2"), // mov WORD PTR [esp-0x4],0xfffe
    (64, "67 89 6c 24 fc", "store ebp 4"), // mov DWORD PTR [esp-0x4],ebp
    (64, "67 8b 6c 24 fc", "load ebp 4 none"), // mov ebp,DWORD PTR [esp-0x4]
    (64, "67 c7 44 24 fc 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [esp-0x4],0xfee00000
    (64, "67 48 89 64 24 fc", "store rsp 8"), // mov QWORD PTR [esp-0x4],rsp
    (64, "67 4c 8b 54 24 fc", "load r10 8 none"), // mov r10,QWORD PTR [esp-0x4]
    (64, "67 48 c7 44 24 fc fe ff ff ff", "store 0xfffffffffffffffe 8"), // mov QWORD PTR [esp-0x4],0xfffffffffffffffe
    (64, "67 4c 0f b6 7c 24 fc", "load r15 1 zero"), // movzx r15,BYTE PTR [esp-0x4]
    (64, "67 66 44 0f b7 54 24 fc", "load r10w 2 zero"), // movzx r10w,WORD PTR [esp-0x4]
    (64, "67 4c 0f be 44 24 fc", "load r8 1 sign"), // movsx r8,BYTE PTR [esp-0x4]
    (64, "67 66 0f bf 44 24 fc", "load ax 2 sign"), // movsx ax,WORD PTR [esp-0x4]
    (64, "67 48 63 6c 24 fc", "load rbp 4 sign"), // movsxd rbp,DWORD PTR [esp-0x4]
    (64, "a0 30 00 e0 fe 00 00 00 00", "load al 1 none"), // movabs al,ds:0xfee00030
    (64, "a2 b0 00 e0 fe 00 00 00 00", "store al 1"), // movabs ds:0xfee000b0,al
    (64, "66 a1 30 00 e0 fe 00 00 00 00", "load ax 2 none"), // movabs ax,ds:0xfee00030
    (64, "66 a3 b0 00 e0 fe 00 00 00 00", "store ax 2"), // movabs ds:0xfee000b0,ax
    (64, "a1 30 00 e0 fe 00 00 00 00", "load eax 4 none"), // movabs eax,ds:0xfee00030
    (64, "a3 b0 00 e0 fe 00 00 00 00", "store eax 4"), // movabs ds:0xfee000b0,eax
    (64, "48 a1 30 00 e0 fe 00 00 00 00", "load rax 8 none"), // movabs rax,ds:0xfee00030
    (64, "48 a3 b0 00 e0 fe 00 00 00 00", "store rax 8"), // movabs ds:0xfee000b0,rax
    (64, "67 a1 78 56 34 12", "load eax 4 none"), // addr32 mov eax,ds:0x12345678
    (64, "67 a2 78 56 34 12", "store al 1"), // addr32 mov ds:0x12345678,al
    (32, "88 00", "store al 1"), // mov BYTE PTR [eax],al
    (32, "8a 20", "load ah 1 none"), // mov ah,BYTE PTR [eax]
    (32, "c6 00 00", "store 0x0 1"), // mov BYTE PTR [eax],0x0
    (32, "66 89 08", "store cx 2"), // mov WORD PTR [eax],cx
    (32, "66 8b 08", "load cx 2 none"), // mov cx,WORD PTR [eax]
    (32, "66 c7 00 34 12", "store 0x1234 2"), // mov WORD PTR [eax],0x1234
    (32, "89 38", "store edi 4"), // mov DWORD PTR [eax],edi
    (32, "8b 38", "load edi 4 none"), // mov edi,DWORD PTR [eax]
    (32, "c7 00 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [eax],0x0
    (32, "0f b6 08", "load ecx 1 zero"), // movzx ecx,BYTE PTR [eax]
    (32, "66 0f b7 18", "load bx 2 zero"), // movzx bx,WORD PTR [eax]
    (32, "0f be 30", "load esi 1 sign"), // movsx esi,BYTE PTR [eax]
    (32, "66 0f bf 20", "load sp 2 sign"), // movsx sp,WORD PTR [eax]
    (32, "88 6d 00", "store ch 1"), // mov BYTE PTR [ebp+0x0],ch
    (32, "8a 5d 00", "load bl 1 none"), // mov bl,BYTE PTR [ebp+0x0]
    (32, "c6 45 00 ff", "store 0xff 1"), // mov BYTE PTR [ebp+0x0],0xff
    (32, "66 89 55 00", "store dx 2"), // mov WORD PTR [ebp+0x0],dx
    (32, "66 8b 45 00", "load ax 2 none"), // mov ax,WORD PTR [ebp+0x0]
    (32, "66 c7 45 00 fe ff", "store 0xfffe 2"), // mov WORD PTR [ebp+0x0],0xfffe
    (32, "89 45 00", "store eax 4"), // mov DWORD PTR [ebp+0x0],eax
    (32, "8b 6d 00", "load ebp 4 none"), // mov ebp,DWORD PTR [ebp+0x0]
    (32, "c7 45 00 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [ebp+0x0],0xfee00000
    (32, "66 0f b6 7d 00", "load di 1 zero"), // movzx di,BYTE PTR [ebp+0x0]
    (32, "0f b7 65 00", "load esp 2 zero"), // movzx esp,WORD PTR [ebp+0x0]
    (32, "66 0f be 7d 00", "load di 1 sign"), // movsx di,BYTE PTR [ebp+0x0]
    (32, "0f bf 7d 00", "load edi 2 sign"), // movsx edi,WORD PTR [ebp+0x0]
    (32, "88 34 24", "store dh 1"), // mov BYTE PTR [esp],dh
    (32, "8a 14 24", "load dl 1 none"), // mov dl,BYTE PTR [esp]
    (32, "c6 04 24 7f", "store 0x7f 1"), // mov BYTE PTR [esp],0x7f
    (32, "66 89 24 24", "store sp 2"), // mov WORD PTR [esp],sp
    (32, "66 8b 2c 24", "load bp 2 none"), // mov bp,WORD PTR [esp]
    (32, "66 c7 04 24 34 12", "store 0x1234 2"), // mov WORD PTR [esp],0x1234
    (32, "89 2c 24", "store ebp 4"), // mov DWORD PTR [esp],ebp
    (32, "8b 14 24", "load edx 4 none"), // mov edx,DWORD PTR [esp]
    (32, "c7 04 24 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR [esp],0xffffffff
    (32, "0f b6 34 24", "load esi 1 zero"), // movzx esi,BYTE PTR [esp]
    (32, "66 0f b7 0c 24", "load cx 2 zero"), // movzx cx,WORD PTR [esp]
    (32, "0f be 14 24", "load edx 1 sign"), // movsx edx,BYTE PTR [esp]
    (32, "66 0f bf 14 24", "load dx 2 sign"), // movsx dx,WORD PTR [esp]
    (32, "88 25 00 03 e0 fe", "store ah 1"), // mov BYTE PTR ds:0xfee00300,ah
    (32, "8a 2d 00 03 e0 fe", "load ch 1 none"), // mov ch,BYTE PTR ds:0xfee00300
    (32, "c6 05 00 03 e0 fe 00", "store 0x0 1"), // mov BYTE PTR ds:0xfee00300,0x0
    (32, "66 89 1d 00 03 e0 fe", "store bx 2"), // mov WORD PTR ds:0xfee00300,bx
    (32, "66 8b 2d 00 03 e0 fe", "load bp 2 none"), // mov bp,WORD PTR ds:0xfee00300
    (32, "66 c7 05 00 03 e0 fe fe ff", "store 0xfffe 2"), // mov WORD PTR ds:0xfee00300,0xfffe
    (32, "89 0d 00 03 e0 fe", "store ecx 4"), // mov DWORD PTR ds:0xfee00300,ecx
    (32, "8b 0d 00 03 e0 fe", "load ecx 4 none"), // mov ecx,DWORD PTR ds:0xfee00300
    (32, "c7 05 00 03 e0 fe 00 00 00 00", "store 0x0 4"), // mov DWORD PTR ds:0xfee00300,0x0
    (32, "66 0f b6 35 00 03 e0 fe", "load si 1 zero"), // movzx si,BYTE PTR ds:0xfee00300
    (32, "0f b7 15 00 03 e0 fe", "load edx 2 zero"), // movzx edx,WORD PTR ds:0xfee00300
    (32, "66 0f be 2d 00 03 e0 fe", "load bp 1 sign"), // movsx bp,BYTE PTR ds:0xfee00300
    (32, "0f bf 2d 00 03 e0 fe", "load ebp 2 sign"), // movsx ebp,WORD PTR ds:0xfee00300
    (32, "88 6c 73 04", "store ch 1"), // mov BYTE PTR [ebx+esi*2+0x4],ch
    (32, "8a 54 73 04", "load dl 1 none"), // mov dl,BYTE PTR [ebx+esi*2+0x4]
    (32, "c6 44 73 04 ff", "store 0xff 1"), // mov BYTE PTR [ebx+esi*2+0x4],0xff
    (32, "66 89 64 73 04", "store sp 2"), // mov WORD PTR [ebx+esi*2+0x4],sp
    (32, "66 8b 44 73 04", "load ax 2 none"), // mov ax,WORD PTR [ebx+esi*2+0x4]
    (32, "66 c7 44 73 04 34 12", "store 0x1234 2"), // mov WORD PTR [ebx+esi*2+0x4],0x1234
    (32, "89 44 73 04", "store eax 4"), // mov DWORD PTR [ebx+esi*2+0x4],eax
    (32, "8b 4c 73 04", "load ecx 4 none"), // mov ecx,DWORD PTR [ebx+esi*2+0x4]
    (32, "c7 44 73 04 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [ebx+esi*2+0x4],0xfee00000
    (32, "0f b6 6c 73 04", "load ebp 1 zero"), // movzx ebp,BYTE PTR [ebx+esi*2+0x4]
    (32, "66 0f b7 4c 73 04", "load cx 2 zero"), // movzx cx,WORD PTR [ebx+esi*2+0x4]
    (32, "0f be 54 73 04", "load edx 1 sign"), // movsx edx,BYTE PTR [ebx+esi*2+0x4]
    (32, "66 0f bf 54 73 04", "load dx 2 sign"), // movsx dx,WORD PTR [ebx+esi*2+0x4]
    (32, "88 b9 78 56 34 12", "store bh 1"), // mov BYTE PTR [ecx+0x12345678],bh
    (32, "8a 89 78 56 34 12", "load cl 1 none"), // mov cl,BYTE PTR [ecx+0x12345678]
    (32, "c6 81 78 56 34 12 7f", "store 0x7f 1"), // mov BYTE PTR [ecx+0x12345678],0x7f
    (32, "66 89 89 78 56 34 12", "store cx 2"), // mov WORD PTR [ecx+0x12345678],cx
    (32, "66 8b 91 78 56 34 12", "load dx 2 none"), // mov dx,WORD PTR [ecx+0x12345678]
    (32, "66 c7 81 78 56 34 12 fe ff", "store 0xfffe 2"), // mov WORD PTR [ecx+0x12345678],0xfffe
    (32, "89 b9 78 56 34 12", "store edi 4"), // mov DWORD PTR [ecx+0x12345678],edi
    (32, "8b 99 78 56 34 12", "load ebx 4 none"), // mov ebx,DWORD PTR [ecx+0x12345678]
    (32, "c7 81 78 56 34 12 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR [ecx+0x12345678],0xffffffff
    (32, "66 0f b6 a1 78 56 34 12", "load sp 1 zero"), // movzx sp,BYTE PTR [ecx+0x12345678]
    (32, "0f b7 b1 78 56 34 12", "load esi 2 zero"), // movzx esi,WORD PTR [ecx+0x12345678]
    (32, "66 0f be 99 78 56 34 12", "load bx 1 sign"), // movsx bx,BYTE PTR [ecx+0x12345678]
    (32, "0f bf b9 78 56 34 12", "load edi 2 sign"), // movsx edi,WORD PTR [ecx+0x12345678]
    (32, "88 1c bd 20 00 00 00", "store bl 1"), // mov BYTE PTR [edi*4+0x20],bl
    (32, "8a 24 bd 20 00 00 00", "load ah 1 none"), // mov ah,BYTE PTR [edi*4+0x20]
    (32, "c6 04 bd 20 00 00 00 00", "store 0x0 1"), // mov BYTE PTR [edi*4+0x20],0x0
    (32, "66 89 2c bd 20 00 00 00", "store bp 2"), // mov WORD PTR [edi*4+0x20],bp
    (32, "66 8b 1c bd 20 00 00 00", "load bx 2 none"), // mov bx,WORD PTR [edi*4+0x20]
    (32, "66 c7 04 bd 20 00 00 00 34 12", "store 0x1234 2"), // mov WORD PTR [edi*4+0x20],0x1234
    (32, "89 2c bd 20 00 00 00", "store ebp 4"), // mov DWORD PTR [edi*4+0x20],ebp
    (32, "8b 3c bd 20 00 00 00", "load edi 4 none"), // mov edi,DWORD PTR [edi*4+0x20]
    (32, "c7 04 bd 20 00 00 00 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [edi*4+0x20],0x0
    (32, "0f b6 34 bd 20 00 00 00", "load esi 1 zero"), // movzx esi,BYTE PTR [edi*4+0x20]
    (32, "66 0f b7 34 bd 20 00 00 00", "load si 2 zero"), // movzx si,WORD PTR [edi*4+0x20]
    (32, "0f be 2c bd 20 00 00 00", "load ebp 1 sign"), // movsx ebp,BYTE PTR [edi*4+0x20]
    (32, "66 0f bf 24 bd 20 00 00 00", "load sp 2 sign"), // movsx sp,WORD PTR [edi*4+0x20]
    (32, "64 88 38", "store bh 1"), // mov BYTE PTR fs:[eax],bh
    (32, "64 8a 30", "load dh 1 none"), // mov dh,BYTE PTR fs:[eax]
    (32, "64 c6 00 ff", "store 0xff 1"), // mov BYTE PTR fs:[eax],0xff
    (32, "64 66 89 00", "store ax 2"), // mov WORD PTR fs:[eax],ax
    (32, "64 66 8b 20", "load sp 2 none"), // mov sp,WORD PTR fs:[eax]
    (32, "64 66 c7 00 fe ff", "store 0xfffe 2"), // mov WORD PTR fs:[eax],0xfffe
    (32, "64 89 10", "store edx 4"), // mov DWORD PTR fs:[eax],edx
    (32, "64 8b 38", "load edi 4 none"), // mov edi,DWORD PTR fs:[eax]
    (32, "64 c7 00 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR fs:[eax],0xfee00000
    (32, "64 66 0f b6 28", "load bp 1 zero"), // movzx bp,BYTE PTR fs:[eax]
    (32, "64 0f b7 30", "load esi 2 zero"), // movzx esi,WORD PTR fs:[eax]
    (32, "64 66 0f be 30", "load si 1 sign"), // movsx si,BYTE PTR fs:[eax]
    (32, "64 0f bf 00", "load eax 2 sign"), // movsx eax,WORD PTR fs:[eax]
    (32, "26 88 56 7f", "store dl 1"), // mov BYTE PTR es:[esi+0x7f],dl
    (32, "26 8a 4e 7f", "load cl 1 none"), // mov cl,BYTE PTR es:[esi+0x7f]
    (32, "26 c6 46 7f 7f", "store 0x7f 1"), // mov BYTE PTR es:[esi+0x7f],0x7f
    (32, "26 66 89 7e 7f", "store di 2"), // mov WORD PTR es:[esi+0x7f],di
    (32, "26 66 8b 6e 7f", "load bp 2 none"), // mov bp,WORD PTR es:[esi+0x7f]
    (32, "26 66 c7 46 7f 34 12", "store 0x1234 2"), // mov WORD PTR es:[esi+0x7f],0x1234
    (32, "26 89 66 7f", "store esp 4"), // mov DWORD PTR es:[esi+0x7f],esp
    (32, "26 8b 4e 7f", "load ecx 4 none"), // mov ecx,DWORD PTR es:[esi+0x7f]
    (32, "26 c7 46 7f ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR es:[esi+0x7f],0xffffffff
    (32, "26 0f b6 66 7f", "load esp 1 zero"), // movzx esp,BYTE PTR es:[esi+0x7f]
    (32, "26 66 0f b7 7e 7f", "load di 2 zero"), // movzx di,WORD PTR es:[esi+0x7f]
    (32, "26 0f be 5e 7f", "load ebx 1 sign"), // movsx ebx,BYTE PTR es:[esi+0x7f]
    (32, "26 66 0f bf 7e 7f", "load di 2 sign"), // movsx di,WORD PTR es:[esi+0x7f]
    (32, "67 88 08", "store cl 1"), // mov BYTE PTR [bx+si],cl
    (32, "67 8a 10", "load dl 1 none"), // mov dl,BYTE PTR [bx+si]
    (32, "67 c6 00 00", "store 0x0 1"), // mov BYTE PTR [bx+si],0x0
    (32, "67 66 89 18", "store bx 2"), // mov WORD PTR [bx+si],bx
    (32, "67 66 8b 08", "load cx 2 none"), // mov cx,WORD PTR [bx+si]
    (32, "67 66 c7 00 fe ff", "store 0xfffe 2"), // mov WORD PTR [bx+si],0xfffe
    (32, "67 89 20", "store esp 4"), // mov DWORD PTR [bx+si],esp
    (32, "67 8b 10", "load edx 4 none"), // mov edx,DWORD PTR [bx+si]
    (32, "67 c7 00 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [bx+si],0x0
    (32, "67 66 0f b6 00", "load ax 1 zero"), // movzx ax,BYTE PTR [bx+si]
    (32, "67 0f b7 10", "load edx 2 zero"), // movzx edx,WORD PTR [bx+si]
    (32, "67 66 0f be 30", "load si 1 sign"), // movsx si,BYTE PTR [bx+si]
    (32, "67 0f bf 20", "load esp 2 sign"), // movsx esp,WORD PTR [bx+si]
    (32, "67 88 46 00", "store al 1"), // mov BYTE PTR [bp+0x0],al
    (32, "67 8a 5e 00", "load bl 1 none"), // mov bl,BYTE PTR [bp+0x0]
    (32, "67 c6 46 00 ff", "store 0xff 1"), // mov BYTE PTR [bp+0x0],0xff
    (32, "67 66 89 56 00", "store dx 2"), // mov WORD PTR [bp+0x0],dx
    (32, "67 66 8b 4e 00", "load cx 2 none"), // mov cx,WORD PTR [bp+0x0]
    (32, "67 66 c7 46 00 34 12", "store 0x1234 2"), // mov WORD PTR [bp+0x0],0x1234
    (32, "67 89 5e 00", "store ebx 4"), // mov DWORD PTR [bp+0x0],ebx
    (32, "67 8b 46 00", "load eax 4 none"), // mov eax,DWORD PTR [bp+0x0]
    (32, "67 c7 46 00 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [bp+0x0],0xfee00000
    (32, "67 0f b6 6e 00", "load ebp 1 zero"), // movzx ebp,BYTE PTR [bp+0x0]
    (32, "67 66 0f b7 4e 00", "load cx 2 zero"), // movzx cx,WORD PTR [bp+0x0]
    (32, "67 0f be 4e 00", "load ecx 1 sign"), // movsx ecx,BYTE PTR [bp+0x0]
    (32, "67 66 0f bf 66 00", "load sp 2 sign"), // movsx sp,WORD PTR [bp+0x0]
    (32, "67 88 43 10", "store al 1"), // mov BYTE PTR [bp+di+0x10],al
    (32, "67 8a 63 10", "load ah 1 none"), // mov ah,BYTE PTR [bp+di+0x10]
    (32, "67 c6 43 10 7f", "store 0x7f 1"), // mov BYTE PTR [bp+di+0x10],0x7f
    (32, "67 66 89 53 10", "store dx 2"), // mov WORD PTR [bp+di+0x10],dx
    (32, "67 66 8b 53 10", "load dx 2 none"), // mov dx,WORD PTR [bp+di+0x10]
    (32, "67 66 c7 43 10 fe ff", "store 0xfffe 2"), // mov WORD PTR [bp+di+0x10],0xfffe
    (32, "67 89 73 10", "store esi 4"), // mov DWORD PTR [bp+di+0x10],esi
    (32, "67 8b 53 10", "load edx 4 none"), // mov edx,DWORD PTR [bp+di+0x10]
    (32, "67 c7 43 10 ff ff ff ff", "store 0xffffffff 4"), // mov DWORD PTR [bp+di+0x10],0xffffffff
    (32, "67 66 0f b6 4b 10", "load cx 1 zero"), // movzx cx,BYTE PTR [bp+di+0x10]
    (32, "67 0f b7 6b 10", "load ebp 2 zero"), // movzx ebp,WORD PTR [bp+di+0x10]
    (32, "67 66 0f be 43 10", "load ax 1 sign"), // movsx ax,BYTE PTR [bp+di+0x10]
    (32, "67 0f bf 53 10", "load edx 2 sign"), // movsx edx,WORD PTR [bp+di+0x10]
    (32, "67 88 b4 34 12", "store dh 1"), // mov BYTE PTR [si+0x1234],dh
    (32, "67 8a 94 34 12", "load dl 1 none"), // mov dl,BYTE PTR [si+0x1234]
    (32, "67 c6 84 34 12 00", "store 0x0 1"), // mov BYTE PTR [si+0x1234],0x0
    (32, "67 66 89 9c 34 12", "store bx 2"), // mov WORD PTR [si+0x1234],bx
    (32, "67 66 8b a4 34 12", "load sp 2 none"), // mov sp,WORD PTR [si+0x1234]
    (32, "67 66 c7 84 34 12 34 12", "store 0x1234 2"), // mov WORD PTR [si+0x1234],0x1234
    (32, "67 89 bc 34 12", "store edi 4"), // mov DWORD PTR [si+0x1234],edi
    (32, "67 8b 8c 34 12", "load ecx 4 none"), // mov ecx,DWORD PTR [si+0x1234]
    (32, "67 c7 84 34 12 00 00 00 00", "store 0x0 4"), // mov DWORD PTR [si+0x1234],0x0
    (32, "67 0f b6 b4 34 12", "load esi 1 zero"), // movzx esi,BYTE PTR [si+0x1234]
    (32, "67 66 0f b7 94 34 12", "load dx 2 zero"), // movzx dx,WORD PTR [si+0x1234]
    (32, "67 0f be 94 34 12", "load edx 1 sign"), // movsx edx,BYTE PTR [si+0x1234]
    (32, "67 66 0f bf a4 34 12", "load sp 2 sign"), // movsx sp,WORD PTR [si+0x1234]
    (32, "67 88 77 fe", "store dh 1"), // mov BYTE PTR [bx-0x2],dh
    (32, "67 8a 67 fe", "load ah 1 none"), // mov ah,BYTE PTR [bx-0x2]
    (32, "67 c6 47 fe ff", "store 0xff 1"), // mov BYTE PTR [bx-0x2],0xff
    (32, "67 66 89 77 fe", "store si 2"), // mov WORD PTR [bx-0x2],si
    (32, "67 66 8b 6f fe", "load bp 2 none"), // mov bp,WORD PTR [bx-0x2]
    (32, "67 66 c7 47 fe fe ff", "store 0xfffe 2"), // mov WORD PTR [bx-0x2],0xfffe
    (32, "67 89 57 fe", "store edx 4"), // mov DWORD PTR [bx-0x2],edx
    (32, "67 8b 77 fe", "load esi 4 none"), // mov esi,DWORD PTR [bx-0x2]
    (32, "67 c7 47 fe 00 00 e0 fe", "store 0xfee00000 4"), // mov DWORD PTR [bx-0x2],0xfee00000
    (32, "67 66 0f b6 47 fe", "load ax 1 zero"), // movzx ax,BYTE PTR [bx-0x2]
    (32, "67 0f b7 77 fe", "load esi 2 zero"), // movzx esi,WORD PTR [bx-0x2]
    (32, "67 66 0f be 47 fe", "load ax 1 sign"), // movsx ax,BYTE PTR [bx-0x2]
    (32, "67 0f bf 67 fe", "load esp 2 sign"), // movsx esp,WORD PTR [bx-0x2]
    (32, "a0 30 00 e0 fe", "load al 1 none"), // mov al,ds:0xfee00030
    (32, "a2 b0 00 e0 fe", "store al 1"), // mov ds:0xfee000b0,al
    (32, "66 a1 30 00 e0 fe", "load ax 2 none"), // mov ax,ds:0xfee00030
    (32, "66 a3 b0 00 e0 fe", "store ax 2"), // mov ds:0xfee000b0,ax
    (32, "a1 30 00 e0 fe", "load eax 4 none"), // mov eax,ds:0xfee00030
    (32, "a3 b0 00 e0 fe", "store eax 4"), // mov ds:0xfee000b0,eax
    (32, "67 a1 34 12", "load eax 4 none"), // addr16 mov eax,ds:0x1234
    (32, "67 66 a3 34 12", "store ax 2"), // addr16 mov ds:0x1234,ax
];

fn mode(bits: u32) -> ExecutionMode {
    match bits {
        64 => ExecutionMode::Bits64,
        32 => ExecutionMode::Bits32,
        _ => unreachable!("the table has 32- and 64-bit rows"),
    }
}

fn parse_hex(text: &str) -> Vec<u8> {
    text.split(' ')
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

/// The register's name as objdump prints it.
fn register_name(operand: GprOperand) -> String {
    const LOW8: [&str; 8] = ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil"];
    const HIGH8: [&str; 4] = ["ah", "ch", "dh", "bh"];
    const LEGACY: [&str; 8] = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"];
    let number = operand.register.number();
    match (operand.part, number) {
        (RegisterPart::High8, 0..=3) => HIGH8[number].to_string(),
        (RegisterPart::High8, _) => panic!("no high byte for {:?}", operand.register),
        (RegisterPart::Low8, 0..=7) => LOW8[number].to_string(),
        (RegisterPart::Low8, _) => format!("r{number}b"),
        (RegisterPart::Low16, 0..=7) => LEGACY[number].to_string(),
        (RegisterPart::Low16, _) => format!("r{number}w"),
        (RegisterPart::Low32, 0..=7) => format!("e{}", LEGACY[number]),
        (RegisterPart::Low32, _) => format!("r{number}d"),
        (RegisterPart::Full, 0..=7) => format!("r{}", LEGACY[number]),
        (RegisterPart::Full, _) => format!("r{number}"),
    }
}

fn describe(access: &MmioAccess) -> String {
    match access {
        MmioAccess::Read(read) => {
            let extension = match read.extension {
                Extension::None => "none",
                Extension::Zero => "zero",
                Extension::Sign => "sign",
            };
            let name = register_name(read.destination);
            format!("load {name} {} {extension}", read.size.bytes())
        }
        MmioAccess::Write(write) => match write.source {
            WriteSource::Register(source) => {
                format!("store {} {}", register_name(source), write.size.bytes())
            }
            WriteSource::Immediate(value) => format!("store {value:#x} {}", write.size.bytes()),
        },
    }
}

#[test]
fn binutils_encodings_decode_as_objdump_reads_them() {
    for &(bits, hex, expected) in BINUTILS {
        let bytes = parse_hex(hex);
        let decoded = decode(&bytes, mode(bits))
            .unwrap_or_else(|error| panic!("{hex} ({bits}-bit): {error:?}"));
        assert_eq!(
            usize::from(decoded.length),
            bytes.len(),
            "{hex} ({bits}-bit) length"
        );
        assert_eq!(describe(&decoded.access), expected, "{hex} ({bits}-bit)");
        instruction::fuzz_decode(&bytes);
    }
}

#[test]
fn table_covers_every_opcode_in_both_modes() {
    let mut opcodes = std::collections::BTreeSet::new();
    for &(bits, hex, _) in BINUTILS {
        let bytes = parse_hex(hex);
        let prefixes = bytes
            .iter()
            .take_while(|&&byte| {
                matches!(byte, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67)
                    || (bits == 64 && (0x40..=0x4f).contains(&byte))
            })
            .count();
        let opcode = match bytes[prefixes] {
            0x0f => 0x0f00 | u16::from(bytes[prefixes + 1]),
            byte => u16::from(byte),
        };
        opcodes.insert((bits, opcode));
    }
    let all = [
        0x88, 0x89, 0x8a, 0x8b, 0xc6, 0xc7, 0xa0, 0xa1, 0xa2, 0xa3, 0x0fb6, 0x0fb7, 0x0fbe, 0x0fbf,
    ];
    for opcode in all {
        assert!(opcodes.contains(&(64, opcode)), "64-bit {opcode:#x}");
        assert!(opcodes.contains(&(32, opcode)), "32-bit {opcode:#x}");
    }
    assert!(opcodes.contains(&(64, 0x63)), "movsxd");
}

/// xorshift64*: enough randomness for a smoke run, and reproducible.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn every_two_byte_start_alone_and_extended() {
    // All 65 536 two-byte starts: alone, with four zero bytes after them, and
    // with a tail that runs to 15 bytes.
    for first in 0..=255u8 {
        for second in 0..=255u8 {
            let mut bytes = [0u8; MAX_LENGTH];
            bytes[0] = first;
            bytes[1] = second;
            instruction::fuzz_decode(&bytes[..2]);
            instruction::fuzz_decode(&bytes[..6]);
            bytes[2..].fill(0x25);
            instruction::fuzz_decode(&bytes);
        }
    }
}

const INPUTS: usize = 200_000;

#[test]
fn fuzz_body_survives_random_and_mutated_input() {
    let started = Instant::now();
    let seeds: Vec<Vec<u8>> = BINUTILS.iter().map(|&(_, hex, _)| parse_hex(hex)).collect();
    let mut random = Random(0x00c0_ffee_1234_5678);
    let mut decoded = 0usize;
    for round in 0..INPUTS {
        let input = if round % 2 == 0 {
            let length = random.below(MAX_LENGTH + 2);
            random.bytes(length)
        } else {
            let mut input = seeds[random.below(seeds.len())].clone();
            for _ in 0..=random.below(3) {
                match random.below(5) {
                    0 if !input.is_empty() => {
                        let at = random.below(input.len());
                        input[at] ^= 1 << random.below(8);
                    }
                    1 if !input.is_empty() => {
                        let at = random.below(input.len());
                        input[at] = random.next() as u8;
                    }
                    2 => {
                        const PREFIXES: [u8; 12] = [
                            0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x64, 0x65, 0x40, 0x48, 0x4f,
                        ];
                        input.insert(0, PREFIXES[random.below(PREFIXES.len())]);
                    }
                    3 => input.truncate(random.below(input.len() + 1)),
                    _ => {
                        let extra = random.below(4);
                        input.extend(random.bytes(extra));
                    }
                }
            }
            input
        };
        instruction::fuzz_decode(&input);
        decoded += usize::from(decode(&input, ExecutionMode::Bits64).is_ok());
    }
    // The mutations keep many inputs valid, so the success paths run too.
    assert!(
        decoded > INPUTS / 20,
        "only {decoded} of {INPUTS} inputs decoded"
    );
    eprintln!(
        "{INPUTS} inputs, {decoded} decoded in 64-bit mode, in {:?}",
        started.elapsed()
    );
}

#[test]
fn sixteen_bit_code_and_overlong_input_are_refused() {
    assert_eq!(
        decode(&[0x8b, 0x00], ExecutionMode::Bits16),
        Err(DecodeError::UnsupportedMode)
    );
    assert_eq!(
        decode(&[0x2e; 40], ExecutionMode::Bits64),
        Err(DecodeError::TooLong)
    );
    // Only the first 15 bytes are looked at.
    let mut long = vec![0x8b, 0x00];
    long.extend([0xff; 40]);
    let decoded = decode(&long, ExecutionMode::Bits32).expect("mov eax,[eax]");
    assert_eq!(decoded.length, 2);
    assert_eq!(decoded.access.size(), AccessSize::Dword);
}

/* The generator (Python 3, GNU binutils 2.40). Run it in an empty directory
   and paste its standard output into BINUTILS.

"""Generates the differential table for hypervisor-core/tests/instruction_fuzz.rs:
assembles every MOV form the decoder supports with GNU as, disassembles with
objdump, and derives the expected access from objdump's own text."""
import random, re, subprocess, sys

RANDOM = random.Random(4)

R8_64 = "al cl dl bl ah ch dh bh spl bpl sil dil r8b r9b r10b r11b r12b r13b r14b r15b".split()
R16_64 = "ax cx dx bx sp bp si di r8w r9w r10w r11w r12w r13w r14w r15w".split()
R32_64 = "eax ecx edx ebx esp ebp esi edi r8d r9d r10d r11d r12d r13d r14d r15d".split()
R64 = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()
MEM64 = ["[rax]", "[rcx+0x10]", "[rbp]", "[rsp]", "[r12]", "[r13]", "[rsp+0x80]",
         "[rbx+rcx*2]", "[rbp+r13*8-0x80]", "[r12+r14*4+0x12345678]", "[rip+0x100]",
         "[0xffffffffff5fb0b0]", "[rax*8+0x1000]", "fs:[rax+8]", "gs:[0x10]", "[eax]",
         "[ebp+esi*4+0x10]", "[r13d+0x20]", "[r12d]", "[esp-4]"]
R8_32 = "al cl dl bl ah ch dh bh".split()
R16_32 = "ax cx dx bx sp bp si di".split()
R32_32 = "eax ecx edx ebx esp ebp esi edi".split()
MEM32 = ["[eax]", "[ebp]", "[esp]", "[0xfee00300]", "[ebx+esi*2+4]", "[ecx+0x12345678]",
         "[edi*4+0x20]", "fs:[eax]", "es:[esi+0x7f]", "[bx+si]", "[bp]", "[bp+di+0x10]",
         "[si+0x1234]", "[bx-2]"]
PTR = {1: "byte ptr", 2: "word ptr", 4: "dword ptr", 8: "qword ptr"}
IMMS = {1: ["0", "-1", "0x7f"], 2: ["0x1234", "-2"], 4: ["0", "0xfee00000", "-1"],
        8: ["0", "-2", "0x7fffffff"]}

def lines(mode):
    if mode == 64:
        regs = {1: R8_64, 2: R16_64, 4: R32_64, 8: R64}
        mems = MEM64
        sizes = [1, 2, 4, 8]
    else:
        regs = {1: R8_32, 2: R16_32, 4: R32_32}
        mems = MEM32
        sizes = [1, 2, 4]
    out = []
    counter = 0
    for mi, mem in enumerate(mems):
        addr16 = mode == 32 and re.search(r"\b(bx|bp|si|di)\b", mem)
        for size in sizes:
            rs = regs[size]
            for k in range(2):
                r = RANDOM.choice(rs)
                counter += 1
                if size == 1 and mode == 64 and r in ("ah", "ch", "dh", "bh") and re.search(r"\br(8|9|1[0-5])|spl|bpl|sil|dil", mem):
                    continue
                out.append(f"mov {PTR[size]} {mem}, {r}" if k == 0 else f"mov {r}, {PTR[size]} {mem}")
            imms = IMMS[size]
            out.append(f"mov {PTR[size]} {mem}, {imms[mi % len(imms)]}")
        dsizes = [2, 4, 8] if mode == 64 else [2, 4]
        for ext in ["movzx", "movsx"]:
            for msize in [1, 2]:
                d = dsizes[(mi + msize) % len(dsizes)]
                rs = regs[d]
                out.append(f"{ext} {RANDOM.choice(rs)}, {PTR[msize]} {mem}")
        if mode == 64:
            out.append(f"movsxd {RANDOM.choice(R64)}, dword ptr {mem}")
    # Accumulator and absolute address (A0-A3).
    if mode == 64:
        for r in ["al", "ax", "eax", "rax"]:
            out.append(f"movabs {r}, [0xfee00030]")
            out.append(f"movabs [0xfee000b0], {r}")
        out.append("addr32 mov eax, [0x12345678]")
        out.append(".att_syntax\naddr32 movb %al, 0x12345678\n.intel_syntax noprefix")
    else:
        for r in ["al", "ax", "eax"]:
            out.append(f"mov {r}, [0xfee00030]")
            out.append(f"mov [0xfee000b0], {r}")
        out.append(".att_syntax\naddr16 movl 0x1234, %eax\naddr16 movw %ax, 0x1234\n.intel_syntax noprefix")
    return out

def assemble(mode):
    src = ".intel_syntax noprefix\n.code%d\n" % mode + "\n".join(lines(mode)) + "\n"
    open(f"g{mode}.s", "w").write(src)
    subprocess.run(["as", f"--{mode}", "-o", f"g{mode}.o", f"g{mode}.s"], check=True)
    dump = subprocess.run(["objdump", "-d", "-M", "intel", "--insn-width=16", f"g{mode}.o"],
                          check=True, capture_output=True, text=True).stdout
    rows = []
    for line in dump.splitlines():
        m = re.match(r"\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(.*)$", line)
        if not m:
            continue
        hexbytes = m.group(1).strip()
        text = re.sub(r"\s+#.*$", "", m.group(2)).strip()
        text = re.sub(r"\s+", " ", text)
        rows.append((mode, hexbytes, text, expect(text)))
    return rows

REGSIZE = {}
for r in R8_64: REGSIZE[r] = 1
for r in R16_64: REGSIZE[r] = 2
for r in R32_64: REGSIZE[r] = 4
for r in R64: REGSIZE[r] = 8
SIZES = {"BYTE": 1, "WORD": 2, "DWORD": 4, "QWORD": 8}

def expect(text):
    words = text.split(" ", 1)
    mnemonic, operands = words[0], words[1]
    while mnemonic in ("addr32", "addr16", "data16", "fs", "gs", "es", "ds", "cs", "ss"):
        mnemonic, operands = operands.split(" ", 1)
    first, second = [o.strip() for o in operands.split(",")]
    def is_mem(o):
        return "[" in o or "PTR" in o or re.search(r"\b(ds|es|fs|gs|cs|ss):", o)
    def mem_size(o, other):
        m = re.match(r"(BYTE|WORD|DWORD|QWORD) PTR", o)
        return SIZES[m.group(1)] if m else REGSIZE[other]
    if is_mem(first):
        assert mnemonic in ("mov", "movabs"), text
        size = mem_size(first, second if second in REGSIZE else None)
        if second in REGSIZE:
            return f"store {second} {size}"
        return f"store {int(second, 16):#x} {size}"
    assert is_mem(second), text
    size = mem_size(second, first)
    ext = {"mov": "none", "movabs": "none", "movzx": "zero", "movsx": "sign", "movsxd": "sign"}[mnemonic]
    return f"load {first} {size} {ext}"

rows = assemble(64) + assemble(32)
for mode, hexbytes, text, exp in rows:
    print(f'    ({mode}, "{hexbytes}", "{exp}"), // {text}')
print(len(rows), file=sys.stderr)
*/
