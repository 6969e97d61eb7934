/* A multiboot (v1) kernel of a few hundred bytes, for the netboot tests: the kind of ELF a
 * unikernel build (ArceOS and friends) hands to iPXE. It prints its command line on COM1 as
 *
 *     vhostnet-multiboot: hello, cmdline=<what the boot loader passed>
 *
 * and powers the machine off through QEMU's isa-debug-exit device (port 0xf4), or halts.
 * Build: as --32 -o hello.o hello.S && ld -m elf_i386 -N -Ttext=0x100000 -o hello.elf hello.o
 * (-N: one segment from 0x100000; without it ld puts the ELF headers in a segment at
 * 0xff000, in the BIOS area, and iPXE refuses the image with EINVAL)
 */
        .set MAGIC, 0x1BADB002
        .set FLAGS, 0x00000003          /* page-align modules, give us the memory map */
        .set COM1, 0x3f8

        .section .text
        .globl _start
        .align 4
multiboot_header:
        .long MAGIC
        .long FLAGS
        .long -(MAGIC + FLAGS)

_start:
        cli
        mov     $stack_top, %esp
        mov     %ebx, %edi              /* the multiboot info structure */
        mov     $hello, %esi
        call    puts
        testl   $4, (%edi)              /* flags bit 2: cmdline is valid */
        jz      1f
        mov     16(%edi), %esi
        call    puts
1:      mov     $newline, %esi
        call    puts
        mov     $0xf4, %dx              /* isa-debug-exit: QEMU exits with (0x10 << 1) | 1 */
        mov     $0x10, %al
        outb    %al, %dx
2:      hlt
        jmp     2b

/* puts: write the NUL-terminated string at %esi to COM1, polling its line status */
puts:
        lodsb
        test    %al, %al
        jz      3f
        mov     %al, %ah
        mov     $COM1 + 5, %dx
4:      inb     %dx, %al
        test    $0x20, %al
        jz      4b
        mov     $COM1, %dx
        mov     %ah, %al
        outb    %al, %dx
        jmp     puts
3:      ret

        .section .rodata
hello:  .asciz "vhostnet-multiboot: hello, cmdline="
newline: .asciz "\r\n"

        .section .bss
        .align 16
        .skip 4096
stack_top:
