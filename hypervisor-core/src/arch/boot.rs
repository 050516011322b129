//! The PVH entry: 32-bit protected mode → long mode → `kernel_entry`.
//!
//! QEMU (or any PVH loader) enters at `pvh_entry32` in 32-bit protected mode,
//! paging off, with `ebx` = physical address of `hvm_start_info`. We build
//! boot page tables identity-mapping the first 4 GiB with 2 MiB pages, enable
//! PAE + long mode + paging, load a minimal GDT and jump to 64-bit code,
//! which calls `kernel::kernel_entry(start_info)` on the boot stack. The core
//! replaces these tables and this GDT with its own during `kernel_entry`.

use core::arch::global_asm;

/// Size of the boot stack (the bootstrap processor's kernel stack).
/// The machine's state lives in `kernel::start`'s frame, on this stack.
pub const BOOT_STACK_SIZE: usize = 1024 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .quad pvh_entry32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_entry32
pvh_entry32:
    cli
    cld
    mov ebp, ebx
    mov esp, offset boot_stack_top

    /* Zero the six boot table pages: PML4, PDPT, four PDs. */
    mov edi, offset boot_page_tables
    xor eax, eax
    mov ecx, 6 * 1024
    rep stosd

    mov eax, offset boot_page_tables + 0x1000
    or eax, 3
    mov dword ptr [boot_page_tables], eax

    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_page_tables + 0x2000
    or eax, 3
    mov dword ptr [boot_page_tables + 0x1000 + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jb 2b

    /* 2048 entries of 2 MiB: present, writable, huge. */
    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_page_tables + 0x2000 + ecx * 8], eax
    mov edx, ecx
    shr edx, 11
    mov dword ptr [boot_page_tables + 0x2000 + ecx * 8 + 4], edx
    inc ecx
    cmp ecx, 2048
    jb 3b

    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, offset boot_page_tables
    mov cr3, eax

    /* EFER: long mode enable, no-execute enable. */
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr

    /* Paging, write protect, protected mode. */
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax

    lgdt [boot_gdt_pointer]
    mov eax, offset long_mode_entry
    push 0x08
    push eax
    retf

    .code64
long_mode_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    mov edi, ebp
    call kernel_entry
4:
    cli
    hlt
    jmp 4b

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_pointer:
    .word boot_gdt_pointer - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_page_tables:
    .skip 6 * 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_size}
    .global boot_stack_top
boot_stack_top:
"#,
    stack_size = const BOOT_STACK_SIZE,
);

/// Called by the boot code above, on the boot stack, in long mode.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(start_info_address: u64) -> ! {
    crate::kernel::start(start_info_address)
}
